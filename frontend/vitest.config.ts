import { defineConfig } from 'vitest/config'

// Unit tests of the pure modules (src/core, src/store.ts) under Node: no browser, no DOM.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
  },
})
