// The browser-side inclusion proof check against a reference Merkle tree
// built here from RFC 9162's definitions (MTH and PATH).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rootFromInclusionProof, verifyInclusion } from '../src/lib/merkle.js';
import { base64Encode } from '../src/lib/encoding.js';

async function sha256(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    buf.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
}

const leafHash = (i) => sha256(new Uint8Array([0]), new TextEncoder().encode(`entry ${i}`));

// Largest power of two smaller than n.
function split(n) {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

async function mth(leaves) {
  if (leaves.length === 1) return leaves[0];
  const k = split(leaves.length);
  return sha256(new Uint8Array([1]), await mth(leaves.slice(0, k)), await mth(leaves.slice(k)));
}

async function path(m, leaves) {
  if (leaves.length === 1) return [];
  const k = split(leaves.length);
  if (m < k) return [...(await path(m, leaves.slice(0, k))), await mth(leaves.slice(k))];
  return [...(await path(m - k, leaves.slice(k))), await mth(leaves.slice(0, k))];
}

async function tree(size) {
  const leaves = [];
  for (let i = 0; i < size; i++) leaves.push(await leafHash(i));
  return { leaves, root: await mth(leaves) };
}

test('every leaf of trees of size 1 to 13 verifies', async () => {
  for (let size = 1; size <= 13; size++) {
    const { leaves, root } = await tree(size);
    for (let i = 0; i < size; i++) {
      const got = await rootFromInclusionProof(i, size, leaves[i], await path(i, leaves));
      assert.deepEqual(got, root, `size ${size} index ${i}`);
    }
  }
});

test('verifyInclusion accepts the server shape and reports the root', async () => {
  const { leaves, root } = await tree(7);
  const proof = {
    index: 5,
    size: 7,
    leaf_hash: base64Encode(leaves[5]),
    root: base64Encode(root),
    hashes: (await path(5, leaves)).map(base64Encode),
  };
  const result = await verifyInclusion(proof, base64Encode(leaves[5]));
  assert.equal(result.ok, true, result.message);
  assert.match(result.message, /^inclusion proof verified ✓ against root /);
});

test('a tampered path, root, index or leaf is rejected', async () => {
  const { leaves, root } = await tree(6);
  const good = {
    index: 2,
    size: 6,
    leaf_hash: base64Encode(leaves[2]),
    root: base64Encode(root),
    hashes: (await path(2, leaves)).map(base64Encode),
  };
  const cases = [
    { ...good, hashes: [...good.hashes].reverse() },
    { ...good, root: base64Encode(leaves[0]) },
    { ...good, index: 3 },
    { ...good, hashes: good.hashes.slice(1) },
    { ...good, hashes: [...good.hashes, good.hashes[0]] },
    { ...good, index: 6 },
    { ...good, hashes: ['not base64!'] },
  ];
  for (const proof of cases) {
    const result = await verifyInclusion(proof);
    assert.equal(result.ok, false, JSON.stringify(proof));
  }
  const otherLeaf = await verifyInclusion(good, base64Encode(leaves[1]));
  assert.equal(otherLeaf.ok, false);
  assert.match(otherLeaf.message, /another leaf/);
});
