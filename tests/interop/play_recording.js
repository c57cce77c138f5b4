// A recording in a real browser: Debian's Chromium, headless (playwright-core
// drives it and downloads nothing), plays an MP4 file in a <video> element
// to its end and prints what it saw as JSON: duration, picture size, and the
// frames getVideoPlaybackQuality counted.
// Usage: node play_recording.js FILE.mp4
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const file = path.resolve(process.argv[2]);
const WAIT = 60000; // ms, for the whole playback

async function main() {
  // A page beside the file, so that file:// may load it.
  const page_path = path.join(path.dirname(file), 'play.html');
  fs.writeFileSync(page_path,
    `<!doctype html><video id="v" muted playsinline src="${path.basename(file)}"></video>`);
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
  });
  try {
    const page = await browser.newPage();
    await page.goto('file://' + page_path);
    const seen = await page.evaluate((wait) => new Promise((resolve, reject) => {
      const v = document.getElementById('v');
      const timer = setTimeout(() => reject(new Error(`not ended in time at ${v.currentTime} s`)), wait);
      v.onerror = () => reject(new Error(`media error ${v.error && v.error.code}: ${v.error && v.error.message}`));
      v.onended = () => {
        clearTimeout(timer);
        const q = v.getVideoPlaybackQuality();
        resolve({
          ended: v.ended,
          duration: v.duration,
          currentTime: v.currentTime,
          width: v.videoWidth,
          height: v.videoHeight,
          totalVideoFrames: q.totalVideoFrames,
          droppedVideoFrames: q.droppedVideoFrames,
        });
      };
      v.play().catch(reject);
    }), WAIT);
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
    fs.rmSync(page_path, { force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
