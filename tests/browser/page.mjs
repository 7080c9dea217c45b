// Drives the web page in headless Chromium, as a person on a phone would, and prints what it shows.
//
//   node tests/browser/page.mjs   (with the environment below; tests/test_browser.py runs it)
//
// BASE_URL     the function, served on loopback
// PHOTO_URLS   JSON array of photo URLs to paste
// UPLOAD       a local photo to choose through the file chooser, opened from the keyboard
// SCREENSHOT   where to save a screenshot of the results
// CHROMIUM     the browser (default /usr/bin/chromium)
//
// Prints one JSON document: the rendered results, the summary line, the chosen-photos list after a
// drop, and any page errors or console errors. The assertions are in tests/test_browser.py.
import { chromium } from "playwright-core";

const env = process.env;
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 780 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => { if (msg.type() === "error") problems.push(`console: ${msg.text()}`); });
  // Listening before the page loads turns file-chooser interception on in time for the key press.
  const chooserOpened = new Promise((resolve) => page.once("filechooser", resolve));

  await page.goto(env.BASE_URL + "/");
  await page.getByLabel("Photo URLs").fill(JSON.parse(env.PHOTO_URLS).join("\n"));

  // The drop zone is a button: focus it, Enter opens the file chooser.
  await page.locator("#drop").focus();
  await page.keyboard.press("Enter");
  let timer;
  const chooser = await Promise.race([chooserOpened, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error("Enter on the drop zone did not open the file chooser")), 30_000);
  })]);
  clearTimeout(timer);
  await chooser.setFiles(env.UPLOAD);

  await page.getByRole("button", { name: "Classify" }).click();
  await page.locator("#summary").waitFor({ timeout: 120_000 });
  // Thumbnails that load stay images; one that cannot (the 404) becomes a labelled placeholder.
  await page.waitForFunction(() => [...document.querySelectorAll("img.thumb")].every((i) => i.naturalWidth > 0));

  const results = await page.$$eval("#results article.result", (articles) => articles.map((a) => ({
    name: a.querySelector("h2").textContent,
    failed: a.classList.contains("failed"),
    alt: a.querySelector(".thumb").getAttribute("alt") ?? a.querySelector(".thumb").getAttribute("aria-label"),
    thumbLoaded: a.querySelector(".thumb").tagName === "IMG",
    species: [...a.querySelectorAll(".prediction .species")].map((s) => s.textContent),
    // Per prediction: the order of its name elements and its common name, or null without one.
    common: [...a.querySelectorAll(".prediction")].map((li) => {
      const names = li.querySelector(".names");
      return names ? [...names.children].map((c) => c.className).join(" > ") + ": " +
        names.querySelector(".common").textContent : null;
    }),
    unrecognised: a.querySelector(".unrecognised") ? a.querySelector(".unrecognised").textContent : null,
    percents: [...a.querySelectorAll(".prediction .pct")].map((s) => s.textContent),
    barWidths: [...a.querySelectorAll(".prediction .bar span")].map((s) => s.style.width),
    error: a.querySelector(".error") ? a.querySelector(".error").textContent : null,
  })));
  const summary = await page.locator("#summary").textContent();
  const liveRegion = await page.locator("#results").getAttribute("aria-live");
  const pageWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  await page.screenshot({ path: env.SCREENSHOT, fullPage: true });

  // A photo dropped on the drop zone joins the chosen photos.
  await page.getByRole("button", { name: "Clear" }).click();
  const dropped = await page.evaluateHandle(() => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array([137, 80, 78, 71])], "dropped.png", { type: "image/png" }));
    return data;
  });
  await page.locator("#drop").dispatchEvent("drop", { dataTransfer: dropped });
  const chosenAfterDrop = await page.$$eval("#chosen li span", (spans) => spans.map((s) => s.textContent));

  console.log(JSON.stringify({ results, summary, liveRegion, pageWidth, chosenAfterDrop, problems }));
} finally {
  await browser.close();
}
