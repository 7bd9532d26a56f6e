// Launching Debian's Chromium through playwright-core (no browser download).

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * A browser with a fresh profile directory (removed by `close`). Pages of one
 * context share localStorage, which is what "two tabs" means.
 */
export async function launch({ colorScheme = 'light', viewport = { width: 1280, height: 800 } } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'chat-e2e-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport,
    colorScheme,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Fails a test if the page ever opens a dialog (alert, confirm, prompt). */
export function forbidDialogs(page) {
  const seen = [];
  page.on('dialog', async (d) => {
    seen.push(d.message());
    await d.dismiss().catch(() => {});
  });
  return seen;
}

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function waitFor(check, { ms = 15_000, every = 100, what = 'condition' } = {}) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${String(last)})`);
}
