/* A small pure-JavaScript SHA-256 for the proof of work (PROTOCOL §1.1).
 *
 * WebCrypto's digest() is asynchronous and costs a promise per hash; the
 * proof of work needs tens of thousands of hashes (2^difficulty on
 * average), so it hashes synchronously here and checks the answer it found
 * with WebCrypto afterwards. The message (nonce || purpose || answer) is
 * padded once; only the 8 answer bytes change between attempts.
 */
"use strict";

const SHA256_K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const SHA256_IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/* Compress the 64-byte block at `off` of `bytes` into `h` (Int32Array(8)),
 * with `w` (Int32Array(64)) as scratch. */
function sha256Block(h, w, bytes, off) {
  for (let i = 0; i < 16; i++) {
    const j = off + 4 * i;
    w[i] = (bytes[j] << 24) | (bytes[j + 1] << 16) | (bytes[j + 2] << 8) | bytes[j + 3];
  }
  for (let i = 16; i < 64; i++) {
    const a = w[i - 15], b = w[i - 2];
    const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
    const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
  }
  let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const ch = (e & f) ^ (~e & g);
    const t1 = (k + S1 + ch + SHA256_K[i] + w[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const maj = (a & b) ^ (a & c) ^ (b & c);
    const t2 = (S0 + maj) | 0;
    k = g; g = f; f = e; e = (d + t1) | 0;
    d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
  h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + k) | 0;
}

/* Message `len` bytes long, padded: returns the padded buffer (a multiple
 * of 64 bytes) whose first `len` bytes the caller fills. */
function sha256Padded(len) {
  const total = Math.ceil((len + 9) / 64) * 64;
  const buf = new Uint8Array(total);
  buf[len] = 0x80;
  const bits = len * 8;  // < 2^32 for every message hashed here
  buf[total - 4] = bits >>> 24; buf[total - 3] = (bits >>> 16) & 0xff;
  buf[total - 2] = (bits >>> 8) & 0xff; buf[total - 1] = bits & 0xff;
  return buf;
}

/* SHA-256 of a padded buffer into `h` (Int32Array(8), big-endian words). */
function sha256PaddedInto(h, w, buf) {
  for (let i = 0; i < 8; i++) h[i] = SHA256_IV[i];
  for (let off = 0; off < buf.length; off += 64) sha256Block(h, w, buf, off);
}

/* Leading zero bits of a digest held as 8 big-endian 32-bit words. */
function leadingZeroBitsWords(h) {
  let n = 0;
  for (let i = 0; i < 8; i++) {
    const z = Math.clz32(h[i]);
    n += z;
    if (z < 32) break;
  }
  return n;
}

/* SHA-256 of a whole Uint8Array, as a Uint8Array(32) (used to check this
 * implementation against WebCrypto before relying on it). */
function sha256(bytes) {
  const buf = sha256Padded(bytes.length);
  buf.set(bytes, 0);
  const h = new Int32Array(8), w = new Int32Array(64);
  sha256PaddedInto(h, w, buf);
  const out = new Uint8Array(32);
  for (let i = 0; i < 8; i++) {
    out[4 * i] = h[i] >>> 24; out[4 * i + 1] = (h[i] >>> 16) & 0xff;
    out[4 * i + 2] = (h[i] >>> 8) & 0xff; out[4 * i + 3] = h[i] & 0xff;
  }
  return out;
}

/* Proof of work: the smallest answer (an unsigned 64-bit integer, kept
 * below 2^53 here) such that SHA-256(prefix || answer as 8 bytes
 * little-endian) has at least `difficulty` leading zero bits. `prefix` is
 * nonce_bytes || purpose_utf8. Returns {answer, hashes}. */
function solvePow(prefix, difficulty, limit) {
  const len = prefix.length + 8;
  const buf = sha256Padded(len);
  buf.set(prefix, 0);
  const at = prefix.length;
  const h = new Int32Array(8), w = new Int32Array(64);
  const max = limit || 2 ** 40;
  for (let answer = 0; answer < max; answer++) {
    let lo = answer >>> 0, hi = Math.floor(answer / 4294967296);
    buf[at] = lo & 0xff; buf[at + 1] = (lo >>> 8) & 0xff;
    buf[at + 2] = (lo >>> 16) & 0xff; buf[at + 3] = lo >>> 24;
    buf[at + 4] = hi & 0xff; buf[at + 5] = (hi >>> 8) & 0xff;
    buf[at + 6] = (hi >>> 16) & 0xff; buf[at + 7] = (hi >>> 24) & 0xff;
    sha256PaddedInto(h, w, buf);
    if (leadingZeroBitsWords(h) >= difficulty) return { answer, hashes: answer + 1 };
  }
  throw new Error("no proof-of-work answer below " + max);
}
