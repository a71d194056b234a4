// The web client's build: `npm run build` writes dist/, which svc-bff serves at `/`.
// `npm run dev` serves the sources with the API proxied to a running gateway.
import { defineConfig } from 'vite';

const api = process.env.TERTULIA_BFF_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    sourcemap: true,
    target: 'es2022',
    // hls.js (~570 kB) is its own chunk, loaded only when a video plays.
    chunkSizeWarningLimit: 600,
  },
  server: { proxy: { '/api': { target: api, ws: true } } },
});
