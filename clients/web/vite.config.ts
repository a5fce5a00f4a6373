// The page's build: TypeScript and JSX (Preact) into dist/, the WebAssembly
// engine emitted as an asset beside the script that loads it.
import { defineConfig } from 'vite';

export default defineConfig({
  oxc: {
    jsx: { runtime: 'automatic', importSource: 'preact' },
  },
  build: {
    outDir: 'dist',
    target: 'es2022',
    assetsInlineLimit: 0,
    // The service worker reads it to keep every file of the page for offline use.
    manifest: 'asset-manifest.json',
  },
});
