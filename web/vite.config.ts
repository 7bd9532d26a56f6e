import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';

// `npm run dev` proxies the API and the WebSocket to the stack behind Nginx.
const backend = process.env.CHAT_BASE_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      '/api': backend,
      // The gateways refuse a socket opened by a page of another origin;
      // the dev server's page is one, so its proxy speaks as the backend's.
      '/ws': { target: backend.replace(/^http/, 'ws'), ws: true, headers: { origin: backend } },
    },
  },
  // No source maps in the served build: the code is readable enough without
  // handing out its sources.
  build: { outDir: 'dist', sourcemap: false },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
