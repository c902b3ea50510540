// The clock stamp `nearcast publish --clock` burns into every frame (the layout of
// media/clock.py), read back from a presented picture. Shared by the watch page and
// the player latency probe (bench/players.py); served at /static/stamp.js.
"use strict";

const STAMP = (() => {
  const COLS = 32, ROWS = 2, GRID_W = 48, GRID_H = 27, ORIGIN_COL = 8, ORIGIN_ROW = 1;
  const MIN_CONTRAST = 40;  // media/clock.py asks 48 of luma; RGB after a colour conversion
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });

  function cellBox(i, w, h) {
    const row = Math.floor(i / COLS), col = i % COLS;
    const c = ORIGIN_COL + col, r = ORIGIN_ROW + row;
    return [Math.floor(c * w / GRID_W), Math.floor(r * h / GRID_H),
            Math.floor((c + 1) * w / GRID_W), Math.floor((r + 1) * h / GRID_H)];
  }

  function crc8(bytes) {
    let crc = 0;
    for (const b of bytes) {
      crc ^= b;
      for (let k = 0; k < 8; k++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
    }
    return crc;
  }

  // The wall-clock milliseconds stamped into the picture `video` shows (w x h), or null.
  function read(video, w, h) {
    if (!w || !h || w < GRID_W * 2 || h < GRID_H * 2) return null;
    const bandH = Math.min(h, Math.floor((ORIGIN_ROW + ROWS) * h / GRID_H) + 1);
    if (canvas.width !== w || canvas.height !== bandH) { canvas.width = w; canvas.height = bandH; }
    ctx.drawImage(video, 0, 0, w, bandH, 0, 0, w, bandH);
    const px = ctx.getImageData(0, 0, w, bandH).data;
    const levels = [];
    for (let i = 0; i < COLS * ROWS; i++) {
      const [x0, y0, x1, y1] = cellBox(i, w, h);
      const qx = Math.floor((x1 - x0) / 4), qy = Math.floor((y1 - y0) / 4);
      let sum = 0, n = 0;
      for (let y = y0 + qy; y < Math.max(y0 + qy + 1, y1 - qy); y++) {
        for (let x = x0 + qx; x < Math.max(x0 + qx + 1, x1 - qx); x++) {
          const o = (y * w + x) * 4;
          sum += 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2]; n++;
        }
      }
      levels.push(sum / n);
    }
    // The sync nibbles 1010 ... 0101: known white and black cells to threshold between.
    const white = [levels[0], levels[2], levels[61], levels[63]];
    const black = [levels[1], levels[3], levels[60], levels[62]];
    if (Math.min(...white) - Math.max(...black) < MIN_CONTRAST) return null;
    const thr = (white.reduce((a, b) => a + b) + black.reduce((a, b) => a + b)) / 8;
    const bits = levels.map(v => (v > thr ? 1 : 0));
    if (bits.slice(0, 4).join("") !== "1010" || bits.slice(60).join("") !== "0101") return null;
    let ms = 0;
    const bytes = [];
    for (let b = 0; b < 6; b++) {
      let byte = 0;
      for (let k = 0; k < 8; k++) byte = (byte << 1) | bits[4 + b * 8 + k];
      bytes.push(byte); ms = ms * 256 + byte;
    }
    let crc = 0;
    for (let k = 0; k < 8; k++) crc = (crc << 1) | bits[52 + k];
    return crc8(bytes) === crc ? ms : null;
  }

  return { read };
})();
