import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// Built from web/ (its node_modules): `npx vite build --config examples/ai-sdk-chat/vite.config.ts`.
// `npx vite --config …` serves it and proxies /api to the stack behind Nginx.
export default defineConfig({
  root: __dirname,
  plugins: [react()],
  server: { proxy: { '/api': process.env.CHAT_BASE_URL ?? 'http://127.0.0.1:8080' } },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false },
});
