// Drives Debian's chromium headless (playwright-core, no downloaded browser) for tests/test_browser.py.
//   node run.mjs vectors URL VECTOR_DIR          -> JSON report of every vector, checked in the page
//   node run.mjs e2e URL IMAGE.png ARTEFACT_DIR  -> JSON {key, mask, encrypted, ...} of a page run
//   node run.mjs docs URL                        -> JSON {ops, external} of the Swagger UI at /docs
// The page is loaded from the test server (http://127.0.0.1 is a secure context, so WebCrypto works).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [mode, url, arg, artefacts] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const consoleLines = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  // Record every request the page makes, so the test can check that no key ever leaves it.
  const sent = [];
  page.on("request", (r) => sent.push({ url: r.url(), method: r.method(), body: r.postDataBuffer()?.toString("latin1") ?? "" }));
  await page.goto(url + "/", { waitUntil: "load" });
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: 30000 });

  if (mode === "vectors") {
    const vectors = fs.readdirSync(arg).filter((f) => f.endsWith(".json")).sort()
      .map((f) => ({ file: f, ...JSON.parse(fs.readFileSync(path.join(arg, f), "utf8")) }));
    const report = await page.evaluate(async (vectors) => {
      const c = await import("/static/js/cipher.js");
      const out = [];
      for (const v of vectors) {
        const key = c.hexToBytes(v.key);
        const r = { file: v.file, checks: {} };
        const img = { width: v.width, height: v.height, data: c.hexToBytes(v.input) };
        const enc = await c.encrypt(img, key, v.scheme);
        r.checks.ciphertext = c.bytesToHex(enc.data) === v.ciphertext;
        r.checks.padded_size = enc.height === v.padded_height && enc.width === v.padded_width;
        for (const [name, s] of Object.entries(v.streams)) {
          r.checks[`subkey:${name}`] = c.bytesToHex(await c.subkey(key, name)) === s.subkey;
          r.checks[`stream:${name}`] = c.bytesToHex(await c.stepStream(key, name, 32)) === s.first_32_bytes;
          r.checks[`draw:${name}`] = JSON.stringify(Array.from(enc.draws[name])) === JSON.stringify(v.draws[name].map(Number));
        }
        r.checks.decrypt = c.bytesToHex((await c.decrypt(enc, key)).data) === v.input;
        const labels = { width: v.width, height: v.height, data: c.hexToBytes(v.labels) };
        const em = await c.encryptMask(labels, key, v.scheme);
        r.checks.encrypted_labels = c.bytesToHex(em.data) === v.encrypted_labels;
        const dm = await c.decryptMask(em, key, v.scheme, [v.height, v.width]);
        r.checks.decrypt_mask = c.bytesToHex(dm.data) === v.labels;
        r.checks.scheme_name = c.schemeName(c.validateScheme(v.scheme)) === v.scheme_name;
        r.ok = Object.values(r.checks).every(Boolean);
        out.push(r);
      }
      return out;
    }, vectors);
    console.log(JSON.stringify({ vectors: report, console: consoleLines }));
  } else if (mode === "e2e") {
    await page.setInputFiles("#file", arg);
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout: 60000 });
    const state = await page.evaluate(() => document.body.dataset.state);
    const status = await page.textContent("#status");
    fs.mkdirSync(artefacts, { recursive: true });
    await page.screenshot({ path: path.join(artefacts, "browser-e2e.png"), fullPage: true });
    const result = await page.evaluate(async () => (await import("/static/js/app.js")).lastResult());
    const legend = await page.$$eval("#legend li.present", (els) => els.map((e) => e.textContent));
    console.log(JSON.stringify({ state, status, result, legend, requests: sent, console: consoleLines }));
  } else if (mode === "docs") {
    await page.goto(url + "/docs", { waitUntil: "load" });
    await page.waitForSelector(".swagger-ui .opblock", { timeout: 30000 });
    const ops = await page.$$eval(".swagger-ui .opblock-summary-path", (els) => els.map((e) => e.textContent.trim()));
    const external = sent.filter((r) => !r.url.startsWith(url)).map((r) => r.url);
    console.log(JSON.stringify({ ops, external, console: consoleLines }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await browser.close();
}
