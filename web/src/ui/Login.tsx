import { useState } from 'react';

interface Props {
  onToken: (token: string) => void;
}

/**
 * `GATEWAY_AUTH=jwt` without a token yet: the demo's login is pasting one
 * (`chatctl token --sub alice`). An embedding app sets `window.chatAuth`
 * instead, or opens the page with `#token=`.
 */
export function Login({ onToken }: Props) {
  const [value, setValue] = useState('');
  return (
    <div className="empty-main">
      <form
        className="banner"
        data-testid="login"
        onSubmit={(e) => {
          e.preventDefault();
          const token = value.trim();
          if (token) onToken(token);
        }}
      >
        <p>This chat uses your app&apos;s login. Paste your token to see your conversations on every device.</p>
        <textarea
          aria-label="Token"
          className="token-input"
          rows={4}
          value={value}
          onChange={(e) => setValue(e.target.value)}
          autoComplete="off"
          spellCheck={false}
        />
        <button type="submit" className="button button-primary">
          Sign in
        </button>
      </form>
    </div>
  );
}
