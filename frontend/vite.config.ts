import { defineConfig } from 'vite'

// Static build served by the backend (backend/main.py mounts frontend/dist at /). No CDN, no run-time network.
export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 4096,
  },
  server: {
    proxy: { '/api': 'http://127.0.0.1:8000' },
  },
})
