// A scripted stand-in for the gateway, inside the browser's network layer
// (page.route / page.routeWebSocket): serves web/dist and speaks the
// WebSocket protocol, so screenshots of every state need no running stack.

import { readFileSync, existsSync } from 'node:fs';
import { extname, join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');
export const MOCK_ORIGIN = 'http://chat.test';

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.map': 'application/json' };

export const SESSION = { session_id: '6f1c2a4e-8d3b-4c1e-9f5a-2b7d9e0c1a3f', token: 'mock-token' };

/** Serves the built app and `POST /api/sessions`. */
export async function serveApp(page) {
  if (!existsSync(join(DIST, 'index.html'))) throw new Error('web/dist is missing: run `npm run build` first');
  await page.route(`${MOCK_ORIGIN}/**`, async (route) => {
    const url = new URL(route.request().url());
    if (url.pathname === '/api/sessions') {
      return route.fulfill({ status: 201, contentType: 'application/json', body: JSON.stringify(SESSION) });
    }
    const path = url.pathname === '/' ? '/index.html' : url.pathname;
    const file = join(DIST, path);
    if (!file.startsWith(DIST) || !existsSync(file)) return route.fulfill({ status: 404, body: 'not found' });
    return route.fulfill({ status: 200, contentType: TYPES[extname(file)] ?? 'application/octet-stream', body: readFileSync(file) });
  });
}

/** Stores the mock session in localStorage so the page opens it. */
export async function seedSession(page, title = '') {
  await page.addInitScript(
    ([s, t]) => {
      if (!localStorage.getItem('chat.sessions.v1')) {
        localStorage.setItem(
          'chat.sessions.v1',
          JSON.stringify([
            { sessionId: s.session_id, token: s.token, title: t, createdAt: Date.now(), updatedAt: Date.now() },
            { sessionId: '0b9d6c1e-1111-4a2b-8c3d-4e5f6a7b8c9d', token: 'x', title: 'Plan a weekend in Lisbon', createdAt: 1, updatedAt: 1 },
            { sessionId: '0b9d6c1e-2222-4a2b-8c3d-4e5f6a7b8c9d', token: 'x', title: 'Why is the sky blue?', createdAt: 1, updatedAt: 1 },
          ]),
        );
        localStorage.setItem('chat.current.v1', s.session_id);
      }
    },
    [SESSION, title],
  );
}

/** Splits text into chunk frames of a few words each. */
export function chunks(messageId, text, firstSeq, attempt = 1) {
  const pieces = text.match(/\S+\s*|\s+/g) ?? [];
  const out = [];
  for (let i = 0; i < pieces.length; i += 3) {
    out.push({ type: 'chunk', message_id: messageId, attempt, index: out.length, text: pieces.slice(i, i + 3).join(''), seq: firstSeq + out.length });
  }
  return out;
}

/**
 * Routes `/ws/chat` to `script(ws, url)`; `ws.send(obj)` sends a frame.
 * Returns the list of connections opened.
 */
export async function mockGateway(page, script) {
  const opened = [];
  await page.routeWebSocket(/\/ws\/chat/, (ws) => {
    const url = new URL(ws.url());
    opened.push(url);
    const handlers = [];
    ws.onMessage((m) => {
      const frame = JSON.parse(String(m));
      for (const h of handlers) h(frame);
    });
    const api = {
      send: (frame) => ws.send(JSON.stringify(frame)),
      close: (code, reason) => ws.close({ code, reason }),
      onMessage: (f) => handlers.push(f),
    };
    script(api, url, opened.length);
  });
  return opened;
}
