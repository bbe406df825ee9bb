// Precompresses the built admin (trunk's dist/): a `.br` (brotli, quality 11) and a `.gz`
// (gzip -9) beside every file a browser downloads, so `breakwater serve` sends them as they are
// to clients that accept them (tower-http's ServeDir, `precompressed_br`/`precompressed_gzip`).
// Run by `just build-admin` after trunk. Node's own zlib: nothing to install.

import { readdirSync, readFileSync, writeFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, gzipSync, constants } from "node:zlib";

const dir = process.argv[2];
if (!dir) throw new Error("usage: node compress.mjs DIST_DIR");
let raw = 0, br = 0, gz = 0;
for (const name of readdirSync(dir)) {
  if (!/\.(wasm|js|css|html|svg|json)$/.test(name)) continue;
  const path = join(dir, name);
  if (!statSync(path).isFile()) continue;
  const bytes = readFileSync(path);
  const b = brotliCompressSync(bytes, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
  });
  const g = gzipSync(bytes, { level: 9 });
  writeFileSync(path + ".br", b);
  writeFileSync(path + ".gz", g);
  raw += bytes.length;
  br += b.length;
  gz += g.length;
}
console.log(`admin download: ${raw} bytes, ${gz} gzip, ${br} brotli`);
