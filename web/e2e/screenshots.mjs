// Saves PNGs of the main states of the UI under web/screenshots/, against a
// scripted gateway (e2e/mock.mjs) so every state can be shown on purpose.
// Usage: npm run build && npm run screenshots

import { mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, waitFor } from './browser.mjs';
import { chunks, mockGateway, MOCK_ORIGIN, seedSession, serveApp, SESSION } from './mock.mjs';

const OUT = join(dirname(fileURLToPath(import.meta.url)), '..', 'screenshots');
mkdirSync(OUT, { recursive: true });

const Q1 = 'How do I read a file line by line in Rust?';
const A1 = `Use a \`BufReader\` around the file and iterate over its \`lines()\`:

\`\`\`rust
use std::fs::File;
use std::io::{self, BufRead, BufReader};

fn main() -> io::Result<()> {
    let file = File::open("notes.txt")?;
    for line in BufReader::new(file).lines() {
        println!("{}", line?);
    }
    Ok(())
}
\`\`\`

Each \`line\` is a \`Result<String>\`: an I/O error can happen mid-file, so **handle it** rather than unwrapping.`;
const Q2 = 'And what if the file is huge?';
const A2 = `Then the same code is fine: \`BufReader\` reads in blocks of 8 KiB, so memory stays flat no matter the size of the file. A few tips:

1. Reuse one \`String\` with \`read_line\` to avoid an allocation per line.
2. If lines can be`;

const M1 = 'a1a1a1a1-0000-4000-8000-000000000001';
const M2 = 'a2a2a2a2-0000-4000-8000-000000000002';
const M3 = 'a3a3a3a3-0000-4000-8000-000000000003';

function conversation(ws, { streaming = true } = {}) {
  let seq = 0;
  ws.send({ type: 'ready', session_id: SESSION.session_id, node: 'gateway-2', last_seq: 0 });
  ws.send({ type: 'user_message', message_id: M1, content: Q1, seq: ++seq });
  for (const c of chunks(M1, A1, seq + 1)) ws.send(c), (seq = c.seq);
  ws.send({ type: 'done', message_id: M1, attempt: 1, finish_reason: 'stop', seq: ++seq });
  if (streaming) {
    ws.send({ type: 'user_message', message_id: M2, content: Q2, seq: ++seq });
    for (const c of chunks(M2, A2, seq + 1)) ws.send(c), (seq = c.seq);
  }
  return seq;
}

async function shoot(name, { colorScheme = 'light', viewport, script, after }) {
  const b = await launch({ colorScheme, viewport });
  try {
    const page = b.context.pages()[0] ?? (await b.context.newPage());
    await serveApp(page);
    await seedSession(page, Q1);
    await mockGateway(page, script);
    await page.goto(`${MOCK_ORIGIN}/`);
    await waitFor(() => page.locator('[data-testid=turn]').count(), { what: 'turns' });
    if (after) await after(page);
    await page.waitForTimeout(400);
    const file = join(OUT, `${name}.png`);
    await page.screenshot({ path: file });
    console.log(`saved ${file}`);
  } finally {
    await b.close();
  }
}

await shoot('streaming', { script: (ws) => conversation(ws) });
await shoot('dark-mode', { colorScheme: 'dark', script: (ws) => conversation(ws) });
await shoot('phone', { viewport: { width: 390, height: 844 }, script: (ws) => conversation(ws) });
await shoot('reconnecting', {
  script: (ws, url, n) => {
    if (n === 1) {
      conversation(ws);
      setTimeout(() => ws.close(1011, 'gone'), 300);
    } else {
      ws.close(1011, 'still down');
    }
  },
  after: (page) => waitFor(() => page.locator('[data-testid=connection][data-state=reconnecting]').count(), { what: 'reconnecting' }),
});
await shoot('error', {
  script: (ws) => {
    let seq = conversation(ws, { streaming: false });
    ws.send({ type: 'user_message', message_id: M3, content: 'Summarise the whole of Wikipedia', seq: ++seq });
    ws.send({ type: 'chunk', message_id: M3, attempt: 1, index: 0, text: 'Wikipedia is', seq: ++seq });
    ws.send({ type: 'restart', message_id: M3, attempt: 2, seq: ++seq });
    ws.send({ type: 'error', message_id: M3, code: 'retries_exhausted', message: 'job failed 5 times', seq: ++seq });
  },
});
// A reasoning model: its thinking streams, then folds away when the answer begins.
await shoot('thinking', {
  script: (ws) => {
    let seq = conversation(ws, { streaming: false });
    const thought = [
      'The user wants the file read lazily. ',
      'BufReader::lines allocates a String per line; ',
      'read_line into one reused buffer avoids that. ',
      'Mention the I/O error per line too.',
    ];
    ws.send({ type: 'user_message', message_id: M2, content: Q2, seq: ++seq });
    const t0 = 1_700_000_000_000_000;
    thought.forEach((text, index) =>
      ws.send({ type: 'reasoning', message_id: M2, attempt: 1, index, text, published_at_us: t0 + index * 1_400_000, seq: ++seq }),
    );
    for (const c of chunks(M2, A2, seq + 1)) ws.send(c), (seq = c.seq);
  },
});
// A regenerated answer: the second version, with ‹ 2 / 2 › to go back to the first.
await shoot('regenerated', {
  script: (ws) => {
    let seq = conversation(ws, { streaming: false });
    ws.send({ type: 'user_message', message_id: M2, content: Q2, seq: ++seq });
    for (const c of chunks(M2, 'Read it in blocks with a `BufReader`.', seq + 1)) ws.send(c), (seq = c.seq);
    ws.send({ type: 'done', message_id: M2, attempt: 1, finish_reason: 'stop', seq: ++seq });
    ws.send({ type: 'user_message', message_id: M3, content: Q2, replaces: M2, seq: ++seq });
    for (const c of chunks(M3, A2 + ' allocations stay flat.', seq + 1)) ws.send(c), (seq = c.seq);
    ws.send({ type: 'done', message_id: M3, attempt: 1, finish_reason: 'stop', seq: ++seq });
  },
});
