// Builds the page into controlplane/ui/static/ (the package ships those files; there is no CDN).
//   node build.mjs          build
//   node build.mjs --check  fail if the committed assets differ from a fresh build
// Assets are named in index.html with a content hash, so browsers never run a stale script.
// BUILD-INFO.json records a hash of the sources; a Python unit test recomputes it to catch
// sources edited without a rebuild (the test needs no Node.js).
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, writeFileSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "controlplane", "ui", "static");
const check = process.argv.includes("--check");

function sha256(data) {
  return createHash("sha256").update(data).digest("hex");
}

// Must match tests/unit/test_ui_assets.py: sorted relative paths, each "path\0content\0".
function sourceHash() {
  const files = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else files.push(path);
    }
  };
  walk(join(here, "src"));
  files.push(join(here, "package-lock.json"), join(here, "build.mjs"));
  const hash = createHash("sha256");
  for (const path of files.map((f) => relative(here, f).split("\\").join("/")).sort()) {
    hash.update(path + "\0");
    hash.update(readFileSync(join(here, path)));
    hash.update("\0");
  }
  return hash.digest("hex");
}

async function bundle(out) {
  mkdirSync(out, { recursive: true });
  const result = await build({
    entryPoints: [join(here, "src", "main.ts")],
    bundle: true,
    format: "esm",
    target: "es2022",
    minify: true,
    legalComments: "none",
    write: false,
    logLevel: "warning",
  });
  const js = result.outputFiles[0].contents;
  const css = readFileSync(join(here, "src", "style.css"));
  const html = readFileSync(join(here, "src", "index.html"), "utf8")
    .replace("__JS_HASH__", sha256(js).slice(0, 12))
    .replace("__CSS_HASH__", sha256(css).slice(0, 12));
  writeFileSync(join(out, "app.js"), js);
  writeFileSync(join(out, "app.css"), css);
  writeFileSync(join(out, "index.html"), html);
  writeFileSync(join(out, "BUILD-INFO.json"), JSON.stringify({ source_sha256: sourceHash() }, null, 2) + "\n");
}

if (check) {
  const out = mkdtempSync(join(tmpdir(), "tdn-ui-"));
  try {
    await bundle(out);
    const stale = ["app.js", "app.css", "index.html", "BUILD-INFO.json"].filter(
      (name) => !readFileSync(join(out, name)).equals(readFileSync(join(target, name))),
    );
    if (stale.length) {
      console.error(`stale web UI assets in ${relative(process.cwd(), target)}: ${stale.join(", ")}; run npm run build`);
      process.exit(1);
    }
    console.log("web UI assets are up to date");
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
} else {
  await bundle(target);
  console.log(`built ${relative(process.cwd(), target)}`);
}
