import { StrictMode, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { detectMode, loadToken, saveToken, takeTokenFromFragment, type AuthMode } from './chat/login';
import { App } from './ui/App';
import { Login } from './ui/Login';
import './styles.css';

// A `#token=` in the URL is taken out of the address bar at once, and kept
// for this tab only.
const fromFragment = takeTokenFromFragment();
if (fromFragment) saveToken(fromFragment);
const initialToken = fromFragment ?? loadToken();

/** Anonymous sessions (the default), or the app's login (`GATEWAY_AUTH=jwt`). */
function Root() {
  const [mode, setMode] = useState<AuthMode | null>(initialToken ? 'jwt' : null);
  const [jwt, setJwt] = useState<string | null>(initialToken);
  useEffect(() => {
    if (mode === null) void detectMode().then(setMode);
  }, [mode]);
  if (mode === null) return null;
  if (mode === 'session') return <App />;
  if (!jwt) {
    return (
      <Login
        onToken={(token) => {
          saveToken(token);
          setJwt(token);
        }}
      />
    );
  }
  return (
    <App
      jwt={jwt}
      onSignedOut={() => {
        saveToken(null);
        setJwt(null);
      }}
    />
  );
}

const root = document.getElementById('root');
if (root) {
  createRoot(root).render(
    <StrictMode>
      <Root />
    </StrictMode>,
  );
}
