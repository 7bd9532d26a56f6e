// GATEWAY_AUTH=jwt: the app's own login. The page gets the user's JWT from
// the embedding app (or, in the demo, pasted or passed as `#token=` in the
// URL fragment, which the browser never sends to a server), keeps it for
// this tab only, and asks the app for a new one before it expires.

/** What an embedding app provides (README, "Bring your own login"). */
export interface ChatAuthHook {
  /** The current user's JWT, for the first load. */
  token?: string;
  /** A new JWT of the same user, asked for before the current one expires; null if none. */
  refreshToken?: () => Promise<string | null>;
}

declare global {
  interface Window {
    chatAuth?: ChatAuthHook;
  }
}

const TOKEN_KEY = 'chat.jwt.v1';

export type AuthMode = 'session' | 'jwt';

function tabStorage(): Storage | null {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

/** `#token=…` of the page's URL, taken out of the address bar at once. */
export function takeTokenFromFragment(loc: Location = window.location, history: History = window.history): string | null {
  const fragment = new URLSearchParams(loc.hash.replace(/^#/, ''));
  const token = fragment.get('token');
  if (!token) return null;
  fragment.delete('token');
  const rest = fragment.toString();
  history.replaceState(null, '', `${loc.pathname}${loc.search}${rest ? `#${rest}` : ''}`);
  return token;
}

export function loadToken(): string | null {
  return window.chatAuth?.token ?? tabStorage()?.getItem(TOKEN_KEY) ?? null;
}

export function saveToken(token: string | null): void {
  const s = tabStorage();
  if (!s) return;
  if (token) s.setItem(TOKEN_KEY, token);
  else s.removeItem(TOKEN_KEY);
}

/**
 * Which login the gateways use: the user endpoint answers 401 without a
 * token in `jwt` mode and 404 (no users) in `session` mode.
 */
export async function detectMode(base = ''): Promise<AuthMode> {
  try {
    const res = await fetch(`${base}/api/sessions`);
    return res.status === 401 ? 'jwt' : 'session';
  } catch {
    return 'session';
  }
}

/** The embedding app's refresh, or the demo's: ask the user to paste a new token. */
export function refreshHook(): () => Promise<string | null> {
  return async () => {
    const fromApp = window.chatAuth?.refreshToken;
    const token = fromApp
      ? await fromApp()
      : window.prompt('Your login expires soon. Paste a new token to stay connected:')?.trim() || null;
    if (token) saveToken(token);
    return token;
  };
}
