import { describe, expect, it } from 'vitest';
import { takeTokenFromFragment } from './login';

describe('login', () => {
  it('takes #token= out of the address bar and keeps the rest of the fragment', () => {
    const replaced: string[] = [];
    const loc = { hash: '#token=abc.def.ghi&x=1', pathname: '/', search: '?a=b' } as Location;
    const history = { replaceState: (_s: unknown, _t: string, url: string) => replaced.push(url) } as unknown as History;
    expect(takeTokenFromFragment(loc, history)).toBe('abc.def.ghi');
    expect(replaced).toEqual(['/?a=b#x=1']);
    expect(takeTokenFromFragment({ hash: '', pathname: '/', search: '' } as Location, history)).toBeNull();
  });
});
