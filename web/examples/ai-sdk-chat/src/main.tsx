// A stock AI SDK chat (`useChat({ resume: true })` + `DefaultChatTransport`)
// on the gateway: the only gateway-specific lines are the `api` URL, the
// bearer header and the stop call.
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport, type UIMessage } from 'ai';
import { useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';

// The gateway behind Nginx: this page's origin, or `?gateway=` (that origin
// must be in the gateway's GATEWAY_CORS_ORIGINS).
const GATEWAY = new URLSearchParams(location.search).get('gateway') ?? '';
const API = `${GATEWAY}/api/ui/chat`;

type Session = { id: string; token: string };

// One conversation per browser: the session is the chat.
async function session(): Promise<Session> {
  const kept = localStorage.getItem('ai-sdk-chat');
  if (kept) return JSON.parse(kept);
  const res = await fetch(`${GATEWAY}/api/sessions`, { method: 'POST' });
  const { session_id: id, token } = await res.json();
  localStorage.setItem('ai-sdk-chat', JSON.stringify({ id, token }));
  return { id, token };
}

function Chat({ id, token, initial }: Session & { initial: UIMessage[] }) {
  const headers = { Authorization: `Bearer ${token}` };
  const transport = useMemo(() => new DefaultChatTransport({ api: API, headers }), [token]);
  const { messages, sendMessage, regenerate, status, stop, error } = useChat({
    id,
    messages: initial,
    resume: true,
    transport,
  });
  const [input, setInput] = useState('');
  const busy = status === 'submitted' || status === 'streaming';

  // The gateway stops the answer, and the stream ends with `abort` by itself;
  // the SDK's stop() alone would only drop the connection (as a reload does).
  const stopAnswer = async () => {
    const res = await fetch(`${API}/${id}/stop`, { method: 'POST', headers });
    if (!res.ok) await stop();
  };

  return (
    <main style={{ maxWidth: 720, margin: '2rem auto', fontFamily: 'system-ui, sans-serif' }}>
      <h1 style={{ fontSize: '1.2rem' }}>useChat on NATS JetStream</h1>
      {messages.map((m) => (
        <div key={m.id} data-role={m.role} className="message" style={{ margin: '0.75rem 0' }}>
          <b>{m.role === 'user' ? 'You' : 'Assistant'}</b>
          {m.parts.map((part, i) =>
            part.type === 'reasoning' ? (
              <details key={i} className="reasoning">
                <summary>Thinking</summary>
                <p style={{ color: '#666' }}>{part.text}</p>
              </details>
            ) : part.type === 'text' ? (
              <p key={i} className="text" style={{ whiteSpace: 'pre-wrap', margin: '0.25rem 0' }}>
                {part.text}
              </p>
            ) : null,
          )}
        </div>
      ))}
      {error && <p role="alert" style={{ color: '#b00' }}>{error.message}</p>}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (!input.trim()) return;
          sendMessage({ text: input });
          setInput('');
        }}
        style={{ display: 'flex', gap: '0.5rem' }}
      >
        <input
          aria-label="Message"
          value={input}
          onChange={(e) => setInput(e.target.value)}
          placeholder="Ask something"
          style={{ flex: 1, padding: '0.5rem' }}
        />
        {busy ? (
          <button type="button" onClick={stopAnswer}>Stop</button>
        ) : (
          <>
            <button type="submit">Send</button>
            <button type="button" onClick={() => regenerate()} disabled={messages.length === 0}>
              Regenerate
            </button>
          </>
        )}
      </form>
      <p data-status={status} style={{ color: '#888', fontSize: '0.8rem' }}>{status}</p>
    </main>
  );
}

function App() {
  const [ready, setReady] = useState<(Session & { initial: UIMessage[] }) | null>(null);
  useEffect(() => {
    (async () => {
      const s = await session();
      const res = await fetch(`${API}/${s.id}/messages`, { headers: { Authorization: `Bearer ${s.token}` } });
      if (res.status === 401) {
        localStorage.removeItem('ai-sdk-chat'); // an expired session: start a new one
        return location.reload();
      }
      setReady({ ...s, initial: await res.json() });
    })();
  }, []);
  return ready ? <Chat {...ready} /> : <p>Connecting…</p>;
}

createRoot(document.getElementById('root')!).render(<App />);
