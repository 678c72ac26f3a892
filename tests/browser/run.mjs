// Drives Debian's chromium headless (playwright-core, no downloaded browser) for tests/test_browser.py.
//   node run.mjs vectors URL VECTOR_DIR        -> JSON report of every vector, checked in the page
//   node run.mjs arranged URL DIR...           -> the same for the format-v3 arrangement vectors (section 13)
//   node run.mjs scenarios SPEC.json           -> JSON {name: result} of the page scenarios in SPEC
//   node run.mjs refine URL CASES.json         -> JSON {cases: [{labels hex in, refined hex out, ms}]} of the page's refiner
//   node run.mjs docs URL                      -> JSON {ops, external} of the Swagger UI at /docs
//   node run.mjs bench URL [REPEATS] [SCHEMES] -> JSON timings of the page's cipher on 1024x2048
// The page is loaded from a test server (http://127.0.0.1 is a secure context, so WebCrypto works).
// Every scenario runs in a fresh browser context; one chromium serves them all (fast on 2 cores).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [mode, ...args] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});

/** A fresh page on `url` that records requests, console lines and state transitions. */
async function openPage(url, { viewport = DESKTOP, bypassCSP = false } = {}) {
  const context = await browser.newContext({ viewport, bypassCSP, acceptDownloads: true });
  const page = await context.newPage();
  const log = { console: [], requests: [] };
  page.on("console", (m) => log.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => log.requests.push({ url: r.url(), method: r.method(), body: r.postDataBuffer()?.toString("latin1") ?? "" }));
  log.failed = [];
  log.finished = [];
  page.on("requestfailed", (r) => log.failed.push({ url: r.url(), failure: r.failure()?.errorText ?? "" }));
  page.on("requestfinished", (r) => log.finished.push(r.url()));
  // An observer independent of the page's code: every state the body enters, with the status then.
  await page.addInitScript(() => {
    window.__states = [];
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__violations.push({ blocked: e.blockedURI, directive: e.violatedDirective }));
    document.addEventListener("DOMContentLoaded", () => {
      const note = () => window.__states.push({ state: document.body.dataset.state, status: document.getElementById("status").textContent });
      new MutationObserver((ms) => { if (ms.some((m) => m.oldValue !== document.body.dataset.state)) note(); })
        .observe(document.body, { attributes: true, attributeFilter: ["data-state"], attributeOldValue: true });
    });
  });
  const response = await page.goto(url + "/", { waitUntil: "load" });
  await waitState(page, ["ready", "error"], 30000);
  return { context, page, log, response };
}

function waitState(page, states, timeout = 60000) {
  return page.waitForFunction((s) => s.includes(document.body.dataset.state), states, { timeout });
}

async function snapshot(page) {
  return page.evaluate(async () => {
    const app = await import("/static/js/app.js");
    const $ = (id) => document.getElementById(id);
    const canvas = (id) => [$(id).width, $(id).height];
    return {
      state: document.body.dataset.state,
      status: $("status").textContent,
      states: window.__states,
      result: app.lastResult(),
      picked: app.pickedImage(),
      history: app.runHistory(),
      canvases: Object.fromEntries(["original", "encrypted", "server-labels", "overlay"].map((id) => [id, canvas(id)])),
      alts: Object.fromEntries(["original", "encrypted", "server-labels", "overlay"].map((id) => [id, $(id).getAttribute("aria-label")])),
      legend: [...document.querySelectorAll("#legend li.present")].map((e) => e.textContent),
      downloads: ["download-mask", "download-colour", "download-overlay"].filter((id) => !$(id).hidden).map((id) => $(id).download),
      keyShown: !$("key-box").hidden,
      keyText: $("key-hex").textContent,
      runDisabled: $("run").disabled,
      cancelDisabled: $("cancel").disabled,
      schemeDisabled: $("scheme").disabled,
      stages: Object.fromEntries([...document.querySelectorAll("#stages li")].map((li) => [li.dataset.stage, li.dataset.status])),
      progress: $("progress").value,
      offer: $("limit-offer").hidden ? null : $("limit-text").textContent,
      confirm: $("confirm-plain").hidden ? null : $("confirm-plain-text").textContent,
      schemeNote: $("scheme-note").textContent,
      encryptedCaption: $("encrypted-caption").textContent,
      model: $("model-statement").textContent,
      formats: $("format-version").textContent,
      selectedScheme: $("scheme").options[$("scheme").selectedIndex]?.textContent ?? null,
    };
  });
}

/** Pick the option whose value or text names `name` (e.g. "plain", "bs-np-cs"). */
async function chooseScheme(page, name) {
  const value = await page.$$eval("#scheme option", (opts, name) => {
    const o = opts.find((o) => o.value === name || o.textContent.split(/[ :]/)[0] === name);
    return o ? o.value : null;
  }, name);
  if (value === null) throw new Error(`no scheme option ${name}`);
  await page.selectOption("#scheme", value); // fires change: with no image picked yet, nothing runs
}

const segments = (log) => log.requests.filter((r) => r.url.endsWith("/v1/segment"));

async function downloadInfo(page, id) {
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click(`#${id}`)]);
  const file = await dl.path();
  const b = fs.readFileSync(file);
  return { name: dl.suggestedFilename(), width: b.readUInt32BE(16), height: b.readUInt32BE(20), colourType: b[25] };
}

// -- accessibility: names, tab order, contrast -------------------------------------------------------

async function accessibility(page) {
  const controls = await page.evaluate(() => {
    const visible = (el) => el.checkVisibility({ visibilityProperty: true });
    const nameOf = (el) => {
      if (el.getAttribute("aria-label")) return el.getAttribute("aria-label");
      const by = el.getAttribute("aria-labelledby");
      if (by) return by.split(/\s+/).map((id) => document.getElementById(id)?.textContent || "").join(" ").trim();
      if (el.labels && el.labels.length) return [...el.labels].map((l) => l.textContent).join(" ").trim();
      return (el.textContent || el.title || "").trim();
    };
    let n = 0;
    return [...document.querySelectorAll("input, select, button, a[href], summary, canvas")].filter(visible).map((el) => {
      el.dataset.a11yId = String(n++);
      // a radio group takes one tab stop (its checked radio); arrow keys move inside it
      const focusable = el.tagName !== "CANVAS" && !(el.type === "radio" && !el.checked);
      return { id: el.dataset.a11yId, tag: el.tagName.toLowerCase(), elId: el.id || el.name, name: nameOf(el), disabled: !!el.disabled,
        role: el.getAttribute("role"), focusable };
    });
  });
  // Tab through the page from the top: every enabled control must receive the focus.
  const reached = new Set();
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press("Tab");
    const id = await page.evaluate(() => document.activeElement?.dataset?.a11yId ?? null);
    if (id !== null) reached.add(id);
  }
  const contrast = await page.evaluate(() => {
    const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
      .reduce((acc, v, i) => acc + v * [0.2126, 0.7152, 0.0722][i], 0);
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const opacity = (el) => { let o = 1; for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity); return o; };
    const out = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let t = walker.nextNode(); t; t = walker.nextNode()) {
      const el = t.parentElement;
      if (!t.textContent.trim() || !el || el.closest("canvas, option, optgroup, [hidden], dialog:not([open])")) continue;
      if (!(el.offsetWidth || el.offsetHeight)) continue;
      const fg = rgb(getComputedStyle(el).color).slice(0, 3), bg = background(el);
      const [a, b] = [lum(fg), lum(bg)];
      out.push({ text: t.textContent.trim().slice(0, 40), ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), opacity: opacity(el) });
    }
    return out;
  });
  return {
    unlabelled: controls.filter((c) => !c.name).map((c) => `${c.tag}#${c.elId}`),
    unreachable: controls.filter((c) => c.focusable && !c.disabled && !reached.has(c.id)).map((c) => `${c.tag}#${c.elId}`),
    canvases: controls.filter((c) => c.tag === "canvas").map((c) => ({ id: c.elId, role: c.role, name: c.name })),
    lowContrast: contrast.filter((c) => c.ratio < 4.5 || c.opacity < 1),
    texts: contrast.length,
    controls: controls.length,
  };
}

// -- the scenarios -----------------------------------------------------------------------------------

const scenarios = {
  /** A server whose model ships a client refiner: the page refines the decrypted labels; the box toggles back. */
  async refiner({ url, image }) {
    const { page, log, context } = await openPage(url);
    const out = { boxShown: await page.isVisible("#refine"), boxChecked: await page.isChecked("#refine") };
    await page.setInputFiles("#file", image);
    await waitState(page, ["done", "error"]);
    const caption = () => page.textContent("#overlay-caption");
    const pixels = () => page.evaluate(() => {
      const c = document.getElementById("overlay");
      return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 !== 3)).join(",");
    });
    out.on = { ...(await snapshot(page)), caption: await caption(), pixels: await pixels(),
      refineStage: await page.textContent('#stages [data-stage="refine"]') };
    await page.uncheck("#refine");
    await page.waitForFunction(() => document.getElementById("overlay-caption").textContent === "Segmentation, decrypted here");
    await page.waitForTimeout(300); // the downloads follow asynchronously
    out.off = { ...(await snapshot(page)), caption: await caption(), pixels: await pixels(), download: await downloadInfo(page, "download-mask") };
    await page.check("#refine");
    out.back = { ...(await snapshot(page)), caption: await caption(), pixels: await pixels() };
    out.requests = log.requests.map((r) => ({ url: r.url, method: r.method }));
    out.console = log.console;
    await context.close();
    return out;
  },

  /** A street scene end to end, with screenshots at desktop and phone widths and the a11y checks. */
  async e2e({ url, image, artefacts }) {
    const { page, log, context, response } = await openPage(url);
    await page.setInputFiles("#file", image);
    await waitState(page, ["done", "error"]);
    const snap = await snapshot(page);
    fs.mkdirSync(artefacts, { recursive: true });
    await page.screenshot({ path: path.join(artefacts, "browser-e2e.png"), fullPage: true });
    await page.screenshot({ path: path.join(artefacts, "page-desktop.png"), fullPage: true });
    const a11y = await accessibility(page);
    // the view controls: mask-only, opacity, the class under the pointer, enlarge
    const view = {};
    const overlayPixel = () => page.evaluate(() => Array.from(document.getElementById("overlay").getContext("2d").getImageData(5, 5, 1, 1).data.slice(0, 3)));
    view.at50 = await overlayPixel();
    await page.fill("#opacity", "100");
    await page.dispatchEvent("#opacity", "input");
    view.at100 = await overlayPixel();
    await page.check('input[name="view"][value="mask"]');
    view.maskOnly = await overlayPixel();
    view.maskAlt = await page.getAttribute("#overlay", "aria-label");
    const box = await page.locator("#overlay").boundingBox();
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.9);
    view.hover = await page.textContent("#hover");
    await page.click('button.enlarge[data-canvas="overlay"]');
    view.zoomOpen = await page.evaluate(() => document.getElementById("zoom").open);
    view.zoomSize = await page.evaluate(() => [document.getElementById("zoom-canvas").width, document.getElementById("zoom-canvas").height]);
    await page.screenshot({ path: path.join(artefacts, "page-zoom.png") });
    await page.keyboard.press("Escape");
    view.zoomClosed = !(await page.evaluate(() => document.getElementById("zoom").open));
    view.downloads = {};
    for (const id of ["download-mask", "download-colour", "download-overlay"]) view.downloads[id] = await downloadInfo(page, id);
    await page.setViewportSize(PHONE);
    await page.check('input[name="view"][value="overlay"]');
    await page.fill("#opacity", "50"); // back to the default, so the phone screenshot shows the overlay
    await page.dispatchEvent("#opacity", "input");
    await page.screenshot({ path: path.join(artefacts, "page-phone.png"), fullPage: true });
    view.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await context.close();
    return { ...snap, a11y, view, requests: log.requests, console: log.console, csp: response.headers()["content-security-policy"] ?? null };
  },

  /** Scheme plain: nothing is sent before the user says yes; the status says what was sent. */
  async plain({ url, image }) {
    const out = {};
    {
      const { page, log, context } = await openPage(url);
      await chooseScheme(page, "plain");
      out.noteBefore = await page.textContent("#scheme-note");
      await page.setInputFiles("#file", image);
      await waitState(page, ["confirm", "error"]);
      out.confirm = await snapshot(page);
      out.sentBeforeConfirm = segments(log).length;
      await page.click("#send-plain");
      await waitState(page, ["done", "error"]);
      out.sent = await snapshot(page);
      out.segmentBodies = segments(log).map((r) => r.body.length);
      await context.close();
    }
    {
      const { page, log, context } = await openPage(url);
      await chooseScheme(page, "plain");
      await page.setInputFiles("#file", image);
      await waitState(page, ["confirm", "error"]);
      await page.click("#keep-plain");
      await waitState(page, ["cancelled", "error", "done"]);
      await page.waitForTimeout(300);
      out.declined = await snapshot(page);
      out.sentAfterDecline = segments(log).length;
      await context.close();
    }
    return out;
  },

  /** A large image, then a small one a few tens of ms later (and again once the first upload is out). */
  async race({ url, big, small }) {
    const out = {};
    for (const when of ["during-encrypt", "during-segment"]) {
      const { page, log, context } = await openPage(url);
      let first = true;
      await page.route("**/v1/segment", async (route) => {
        const delay = first ? 1500 : 0;
        first = false;
        await new Promise((r) => setTimeout(r, delay));
        try { await route.continue(); } catch { /* the page cancelled it */ }
      });
      await page.setInputFiles("#file", big);
      if (when === "during-encrypt") await page.waitForTimeout(30);
      else await page.waitForRequest("**/v1/segment");
      const during = await page.evaluate(() => ({ run: document.getElementById("run").disabled, scheme: document.getElementById("scheme").disabled,
        cancel: document.getElementById("cancel").disabled, state: document.body.dataset.state }));
      await page.setInputFiles("#file", small);
      await waitState(page, ["done", "error"]);
      await page.waitForTimeout(2200); // long enough for the big image's delayed answer, had it been kept
      const snap = await snapshot(page);
      snap.during = during;
      snap.downloads = {};
      for (const id of ["download-mask", "download-colour", "download-overlay"]) snap.downloads[id] = await downloadInfo(page, id);
      snap.segmentRequests = segments(log).length;
      snap.console = log.console;
      out[when] = snap;
      await context.close();
    }
    return out;
  },

  /** An error (a file that is not an image, a refused image) clears what the old image owned. */
  async stale({ url, image, bad, refused }) {
    const out = {};
    for (const [name, file] of [["not-an-image", bad], ["refused", refused]]) {
      const { page, log, context } = await openPage(url);
      await page.setInputFiles("#file", image);
      await waitState(page, ["done", "error"]);
      out.before = await snapshot(page);
      await page.setInputFiles("#file", file);
      await waitState(page, ["error", "done"]);
      await page.waitForTimeout(200);
      const snap = await snapshot(page);
      snap.segmentRequests = segments(log).length;
      snap.hoverText = await page.textContent("#hover");
      out[name] = snap;
      await context.close();
    }
    return out;
  },

  /** The scheme list follows /v1/info; the X-Encseg-Trained-For-Scheme header is honoured. */
  async trained({ url, image, untrained }) {
    const out = {};
    {
      const { page, context } = await openPage(url);
      out.options = await page.$$eval("#scheme optgroup", (gs) => gs.map((g) => ({ label: g.label, options: [...g.children].map((o) => o.textContent) })));
      out.selected = await page.$eval("#scheme", (s) => s.options[s.selectedIndex].textContent);
      out.defaultNote = await page.textContent("#scheme-note");
      await chooseScheme(page, untrained);
      out.untrainedNote = await page.textContent("#scheme-note");
      await page.setInputFiles("#file", image);
      await waitState(page, ["done", "error"]);
      out.untrainedRun = await snapshot(page);
      await context.close();
    }
    {
      // the server's header wins over the page's own reading of /v1/info
      const { page, context } = await openPage(url);
      await page.route("**/v1/segment", async (route) => {
        const resp = await route.fetch();
        await route.fulfill({ response: resp, headers: { ...resp.headers(), "x-encseg-trained-for-scheme": "false" } });
      });
      await page.setInputFiles("#file", image);
      await waitState(page, ["done", "error"]);
      out.headerFalse = await snapshot(page);
      await context.close();
    }
    return out;
  },

  /** Stages and progress while the server works; Cancel stops the run; a lost server is named as such. */
  async stages({ url, slowUrl, image }) {
    const out = {};
    {
      const { page, log, context } = await openPage(slowUrl); // a server that takes 2 s to segment
      await page.setInputFiles("#file", image);
      await page.waitForFunction(() => document.querySelector('#stages [data-stage="segment"]').dataset.status === "active", null, { timeout: 20000 });
      out.during = await snapshot(page);
      await page.click("#cancel");
      await page.waitForTimeout(3000); // past the delayed answer
      out.after = await snapshot(page);
      out.requests = segments(log).length;
      await context.close();
    }
    {
      const { page, context } = await openPage(url);
      await page.route("**/v1/segment", (route) => route.abort("connectionrefused"));
      await page.setInputFiles("#file", image);
      await waitState(page, ["done", "error"]);
      out.lost = await snapshot(page);
      await context.close();
    }
    {
      const { page, context } = await openPage(url);
      await page.route("**/v1/segment", (route) => route.fulfill({ status: 503, contentType: "application/json",
        headers: { "Retry-After": "7" }, body: JSON.stringify({ detail: "the queue is full" }) }));
      await page.setInputFiles("#file", image);
      await waitState(page, ["done", "error"]);
      out.busy = await snapshot(page);
      await context.close();
    }
    return out;
  },

  /** How the page reads each file: accepted (its RGB bytes) or refused (the message). */
  async files({ url, files }) {
    const { page, context } = await openPage(url);
    const out = {};
    for (const file of files) {
      const before = Number(await page.evaluate(() => document.body.dataset.runs || 0));
      await page.setInputFiles("#file", file);
      await page.waitForFunction((n) => Number(document.body.dataset.runs || 0) > n && ["done", "error"].includes(document.body.dataset.state), before, { timeout: 30000 });
      const snap = await snapshot(page);
      out[path.basename(file)] = { state: snap.state, status: snap.status, picked: snap.picked };
    }
    await context.close();
    return out;
  },

  /** The JPEG transport: the same image as PNG, then as JPEG; the bodies go back to the test. */
  async jpeg({ url, image }) {
    const { page, log, context } = await openPage(url);
    const out = { available: !(await page.locator("#transport-box").isHidden()) };
    if (out.available) {
      await page.setInputFiles("#file", image);
      await waitState(page, ["done", "error"]);
      out.png = await snapshot(page);
      await page.selectOption("#transport", "jpeg"); // a new transport runs the image again
      await page.waitForFunction(() => document.body.dataset.runs === "2" && ["done", "error"].includes(document.body.dataset.state), null, { timeout: 60000 });
      out.jpeg = await snapshot(page);
      out.note = await page.textContent("#transport-note");
      // the second panel: the pixels drawn there, to compare with what was sent
      out.panel = await page.evaluate(() => {
        const c = document.getElementById("encrypted");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const rgb = new Uint8Array((d.length / 4) * 3);
        for (let i = 0, j = 0; i < d.length; i += 4, j += 3) rgb.set(d.subarray(i, i + 3), j);
        return Array.from(rgb, (b) => b.toString(16).padStart(2, "0")).join("");
      });
      out.serverCaption = await page.textContent("#server-labels-caption");
      out.requests = segments(log).length; // (their bodies: the test reads them on the server's side)
    }
    await context.close();
    return out;
  },

  /** Format v3: a server that refuses the sorted image (422) gets the ciphertext again, unarranged. */
  async "sort-refused"({ url, image }) {
    const { page, log, context } = await openPage(url);
    let refused = 0;
    await page.route("**/v1/segment", async (route) => {
      if (refused++ === 0) {
        await route.fulfill({ status: 422, contentType: "application/json",
          body: JSON.stringify({ detail: "this model is not order-free inside the pixel groups of this scheme" }) });
      } else await route.continue();
    });
    await page.selectOption("#transport", "jpeg"); // no image yet: nothing runs
    await page.setInputFiles("#file", image);
    await waitState(page, ["done", "error"]);
    const snap = await snapshot(page);
    snap.bodies = segments(log).map((r) => {
      const m = /encseg\u0000(\{[^\u0000]*?\})\xff/.exec(r.body); // the COM segment's JSON (it ends where DQT begins)
      return m ? m[1] : null;
    });
    snap.console = log.console;
    await context.close();
    return snap;
  },

  /** Images over the server's limits: a clear message, nothing sent, and a downscale that works. */
  async limits({ url, tooWide, tooHeavy }) {
    const out = {};
    for (const [name, file] of [["side", tooWide], ["body", tooHeavy]]) {
      const { page, log, context } = await openPage(url);
      await page.setInputFiles("#file", file);
      await waitState(page, ["done", "error"]);
      const refused = await snapshot(page);
      refused.segmentRequests = segments(log).length;
      let downscaled = null;
      if (refused.offer) {
        await page.click("#downscale");
        await waitState(page, ["done", "error"]);
        downscaled = await snapshot(page);
        downscaled.segmentRequests = segments(log).length;
      }
      out[name] = { refused, downscaled };
      await context.close();
    }
    return out;
  },

  /** The Content-Security-Policy: other origins and inline script are blocked by the browser. */
  async csp({ url, other }) {
    const out = {};
    const attempt = async (bypassCSP) => {
      const { page, log, context, response } = await openPage(url, { bypassCSP });
      const r = await page.evaluate(async (other) => {
        const res = {};
        try { const x = await fetch(other + "/v1/info", { mode: "no-cors" }); res.fetch = `resolved:${x.type}`; } catch (e) { res.fetch = `rejected:${e.name}`; }
        res.xhr = await new Promise((resolve) => {
          try {
            const x = new XMLHttpRequest();
            x.open("GET", other + "/v1/info");
            x.onload = () => resolve(`loaded:${x.status}`);
            x.onerror = () => resolve("error");
            x.send();
          } catch (e) { resolve(`threw:${e.name}`); }
        });
        const s = document.createElement("script");
        s.textContent = "window.__inlineRan = true";
        document.head.append(s);
        await new Promise((r) => setTimeout(r, 100));
        res.inlineRan = Boolean(window.__inlineRan);
        res.violations = window.__violations;
        res.meta = document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.content ?? null;
        return res;
      }, other);
      r.otherFailed = log.failed.filter((q) => q.url.startsWith(other));
      r.otherFinished = log.finished.filter((u) => u.startsWith(other)).length;
      r.header = response.headers()["content-security-policy"] ?? null;
      r.html = await response.text();
      r.console = log.console;
      await context.close();
      return r;
    };
    out.enforced = await attempt(false);
    out.bypassed = await attempt(true); // the control: the same requests go out when the policy is off
    return out;
  },
};

async function bench(url, repeats, schemes) {
  const { page, context } = await openPage(url);
  const r = await page.evaluate(async ([repeats, schemes]) => {
    const c = await import("/static/js/cipher.js");
    const png = await import("/static/js/png.js");
    const jpeg = await import("/static/js/jpeg.js");
    const arr = await import("/static/js/arrange.js");
    const H = 1024, W = 2048;
    const img = { width: W, height: H, data: new Uint8Array(H * W * 3) };
    for (let o = 0; o < img.data.length; o += 65536) crypto.getRandomValues(img.data.subarray(o, Math.min(o + 65536, img.data.length)));
    const labels = { width: W, height: H, data: new Uint8Array(H * W).map((_, i) => i % 19) };
    const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const time = async (f) => { const t = performance.now(); await f(); return performance.now() - t; };
    const out = { userAgent: navigator.userAgent, cores: navigator.hardwareConcurrency, schemes: {} };
    const copies = [];
    for (let i = 0; i < repeats; i++) copies.push(await time(async () => img.data.slice()));
    out.copy_ms = median(copies);
    for (const name of schemes) {
      const scheme = c.parseScheme(name);
      const t = { encrypt: [], decrypt: [], decrypt_mask: [], png_encode: [], jpeg_encode: [] };
      for (let i = 0; i < repeats; i++) {
        const key = c.generateKey();
        let enc;
        t.encrypt.push(await time(async () => { enc = await c.encrypt(img, key, scheme); }));
        t.decrypt.push(await time(async () => { await c.decrypt(enc, key); }));
        t.decrypt_mask.push(await time(async () => { await c.decryptMask(labels, key, scheme, [H, W]); }));
        t.png_encode.push(await time(async () => { await png.encodePNG(enc.data, W, H, 3); }));
        if (i < 2) t.jpeg_encode.push(await time(async () => { await jpeg.encodeCiphertext(enc.data, W, H, { version: 1 }); }));
        if (arr.arrangementGroup(scheme) !== null) { // format v3: sort every group, and move a label map back
          (t.arrange ??= []).push(await time(async () => arr.arrange(enc, scheme)));
          (t.restore_labels ??= []).push(await time(async () => arr.restoreLabels(labels, enc, scheme)));
        }
      }
      out.schemes[name] = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
    }
    return out;
  }, [repeats, schemes]);
  await context.close();
  return r;
}

try {
  if (mode === "vectors") {
    const [url, dir] = args;
    const { page, context } = await openPage(url);
    const vectors = fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort()
      .map((f) => ({ file: f, ...JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")) }));
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
    await context.close();
    console.log(JSON.stringify({ vectors: report }));
  } else if (mode === "arranged") {
    const [url, ...dirs] = args;
    const { page, context } = await openPage(url);
    const vectors = dirs.flatMap((dir) => fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort()
      .map((f) => ({ file: f, ...JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")) })));
    const report = await page.evaluate(async (vectors) => {
      const c = await import("/static/js/cipher.js");
      const a = await import("/static/js/arrange.js");
      return vectors.map((v) => {
        const r = { file: v.file, checks: {} };
        const enc = { width: v.padded_width, height: v.padded_height, data: c.hexToBytes(v.ciphertext) };
        const A = a.arrange(enc, v.scheme);
        r.checks.arranged = c.bytesToHex(A.data) === v.arranged;
        r.checks.idempotent = c.bytesToHex(a.arrange(A, v.scheme).data) === v.arranged; // a sorted group stays put
        const labels = { width: enc.width, height: enc.height, data: c.hexToBytes(v.labels) };
        r.checks.restored_labels = c.bytesToHex(a.restoreLabels(labels, enc, v.scheme).data) === v.restored_labels;
        r.checks.scheme_name = c.schemeName(c.validateScheme(v.scheme)) === v.scheme_name;
        r.group = a.arrangementGroup(c.validateScheme(v.scheme));
        r.ok = Object.values(r.checks).every(Boolean);
        return r;
      });
    }, vectors);
    await context.close();
    console.log(JSON.stringify({ vectors: report }));
  } else if (mode === "scenarios") {
    const spec = JSON.parse(fs.readFileSync(args[0], "utf8"));
    const results = {};
    for (const [name, params] of Object.entries(spec)) {
      const t0 = Date.now();
      try {
        results[name] = await scenarios[params.scenario || name](params);
      } catch (err) {
        results[name] = { error: String(err && err.stack || err) };
      }
      results[name].seconds = (Date.now() - t0) / 1000;
    }
    console.log(JSON.stringify(results));
  } else if (mode === "refine") {
    const [url, file] = args;
    const { page, context } = await openPage(url);
    const cases = JSON.parse(fs.readFileSync(file, "utf8"));
    const report = await page.evaluate(async (cases) => {
      const c = await import("/static/js/cipher.js");
      const r = await import("/static/js/refine.js");
      const models = {};
      return cases.map((k) => {
        models[k.refiner] ??= r.parseRefiner(k.document, k.num_classes);
        const t = performance.now();
        const out = r.refine(models[k.refiner], { width: k.width, height: k.height, data: c.hexToBytes(k.labels) });
        return { refined: c.bytesToHex(out.data), ms: performance.now() - t, grid: r.gridSize(models[k.refiner].config, k.height, k.width) };
      });
    }, cases.map(({ expected, ...k }) => k));
    await context.close();
    console.log(JSON.stringify({ cases: report }));
  } else if (mode === "docs") {
    const [url] = args;
    const context = await browser.newContext();
    const page = await context.newPage();
    const sent = [];
    page.on("request", (r) => sent.push(r.url()));
    await page.goto(url + "/docs", { waitUntil: "load" });
    await page.waitForSelector(".swagger-ui .opblock", { timeout: 30000 });
    const ops = await page.$$eval(".swagger-ui .opblock-summary-path", (els) => els.map((e) => e.textContent.trim()));
    await context.close();
    console.log(JSON.stringify({ ops, external: sent.filter((u) => !u.startsWith(url)) }));
  } else if (mode === "bench") {
    console.log(JSON.stringify(await bench(args[0], Number(args[1] || 5), (args[2] || "bs-np-cs,bs-ps-np-cs").split(","))));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} finally {
  await browser.close();
}
