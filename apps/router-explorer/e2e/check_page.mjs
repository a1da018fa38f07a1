// Opens the running router explorer in Debian's headless Chromium (playwright-core drives the system
// browser: no browser download), waits until the routing page has drawn its plotly heatmap and curves,
// saves a screenshot and prints what it found as one JSON line.
//
//   node check_page.mjs URL SCREENSHOT.png [TIMEOUT_MS]
//   CHROMIUM=/path/to/chromium overrides /usr/bin/chromium; RX_VIEWPORT=1400x1000 sets the window size;
//   RX_EXPECT=heatmap,lines says what the page must draw (default both).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, screenshot, timeoutArg] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node check_page.mjs URL SCREENSHOT.png [TIMEOUT_MS]");
  process.exit(2);
}
const timeout = Number(timeoutArg || 60000);
const expect = (process.env.RX_EXPECT || "heatmap,lines").split(",");
function viewport(text) {
  const [width, height] = text.split("x").map(Number);
  return { width, height };
}
const profile = mkdtempSync(join(tmpdir(), "rx-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: viewport(process.env.RX_VIEWPORT || "1400x1000"),
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const errors = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (err) => errors.push(String(err)));
  await page.goto(url, { waitUntil: "domcontentloaded", timeout });
  // Drawn: a heatmap image inside a plotly plot and/or SVG line paths of the curves.
  await page.waitForFunction(
    (want) =>
      (!want.includes("heatmap") ||
        document.querySelectorAll(".js-plotly-plot .heatmaplayer image").length > 0) &&
      (!want.includes("lines") ||
        document.querySelectorAll(".js-plotly-plot .scatterlayer path.js-line").length > 0) &&
      document.querySelector("h1") !== null &&
      document.body.innerText.includes("page script ran in"), // the app's last line: the script finished
    expect,
    { timeout },
  );
  // Let the remaining charts of the page settle, then read what was drawn.
  await page.waitForTimeout(1500);
  const found = await page.evaluate(() => {
    const plots = [...document.querySelectorAll(".js-plotly-plot")];
    return {
      plots: plots.length,
      traceTypes: plots.map((p) => (p.data || []).map((t) => t.type || "scatter")),
      heatmapImages: document.querySelectorAll(".js-plotly-plot .heatmaplayer image").length,
      linePaths: document.querySelectorAll(".js-plotly-plot .scatterlayer path.js-line").length,
      exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map((e) => e.innerText),
      title: document.querySelector("h1")?.innerText || null,
      scriptSeconds: Number((document.body.innerText.match(/page script ran in ([0-9.]+) s/) || [])[1]) || null,
    };
  });
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(JSON.stringify({ ok: true, url, screenshot, pageErrors: errors, ...found }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, url, error: String(err), pageErrors: errors }));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
