// The page's build: TypeScript and JSX (Preact) into dist/, the WebAssembly
// engine emitted as an asset beside the script that loads it, and a brotli and
// a gzip copy of every script, style sheet and engine, which the server sends
// to browsers that accept them (the engine is 2.6 MB as is).
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { defineConfig, type Plugin } from 'vite';

const COMPRESSED = /\.(js|css|wasm|html|json)$/;

function precompress(): Plugin {
  let outDir = 'dist';
  return {
    name: 'callsync-precompress',
    apply: 'build',
    configResolved(config) {
      outDir = config.build.outDir;
    },
    closeBundle() {
      const files = readdirSync(outDir, { recursive: true, encoding: 'utf8' }).filter((f) => COMPRESSED.test(f));
      for (const file of files) {
        const full = path.join(outDir, file);
        const bytes = readFileSync(full);
        if (bytes.length < 1024) continue;
        writeFileSync(`${full}.br`, brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length } }));
        writeFileSync(`${full}.gz`, gzipSync(bytes, { level: 9 }));
      }
    },
  };
}

export default defineConfig({
  oxc: {
    jsx: { runtime: 'automatic', importSource: 'preact' },
  },
  plugins: [precompress()],
  build: {
    outDir: 'dist',
    target: 'es2022',
    assetsInlineLimit: 0,
    // The service worker reads it to keep every file of the page for offline use.
    manifest: 'asset-manifest.json',
  },
});
