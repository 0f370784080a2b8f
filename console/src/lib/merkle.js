// Verifies RFC 9162 inclusion proofs in the browser, so that the console
// does not have to take the server's word that an audit entry is in the
// log: leaf hashes are given, interior nodes are SHA-256(0x01 ‖ left ‖ right).

import { decodeBytes, base64Encode } from './encoding.js';

async function nodeHash(left, right) {
  const buf = new Uint8Array(1 + left.length + right.length);
  buf[0] = 0x01;
  buf.set(left, 1);
  buf.set(right, 1 + left.length);
  return new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * The root an inclusion proof leads to (RFC 9162 §2.1.3.2), or throws with
 * the reason the proof is malformed. `index` and `size` are numbers, the
 * hashes Uint8Arrays.
 */
export async function rootFromInclusionProof(index, size, leafHash, path) {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || size < 1) {
    throw new Error(`index ${index} and size ${size} are not a valid position`);
  }
  if (index >= size) throw new Error(`index ${index} is not below the tree size ${size}`);
  // Sizes fit in 53 bits; BigInt keeps the shifts exact beyond 32.
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leafHash;
  for (const p of path) {
    if (sn === 0n) throw new Error('the proof is longer than the tree is deep');
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error('the proof is shorter than the tree is deep');
  return r;
}

/**
 * Checks a proof as /audit/proof/inclusion returns it
 * (`{index, size, leaf_hash, root, hashes}`; `proof` or `audit_path` are
 * accepted for the path). `expectedLeaf` (base64) is the entry's own leaf
 * hash, when the caller has it. Returns `{ok, message, root}`.
 */
export async function verifyInclusion(proof, expectedLeaf) {
  try {
    if (!proof || typeof proof !== 'object') throw new Error('the proof is not an object');
    const index = Number(proof.index);
    const size = Number(proof.size ?? proof.tree_size);
    const leaf = decodeBytes(proof.leaf_hash);
    const root = decodeBytes(proof.root ?? proof.root_hash);
    const raw = proof.hashes ?? proof.proof ?? proof.audit_path ?? proof.inclusion_path ?? [];
    if (!leaf || leaf.length !== 32) throw new Error('the leaf hash is missing or not 32 bytes');
    if (!root || root.length !== 32) throw new Error('the root is missing or not 32 bytes');
    if (!Array.isArray(raw)) throw new Error('the proof path is not a list');
    const path = raw.map(decodeBytes);
    if (path.some((h) => !h || h.length !== 32)) throw new Error('a proof hash is not 32 bytes');
    if (expectedLeaf != null) {
      const want = decodeBytes(expectedLeaf);
      if (!want || !equal(want, leaf)) {
        throw new Error('the proof is for another leaf than this entry');
      }
    }
    const computed = await rootFromInclusionProof(index, size, leaf, path);
    const rootText = base64Encode(root);
    if (!equal(computed, root)) {
      return {
        ok: false,
        root: rootText,
        message: `inclusion proof does NOT verify: computed root ${base64Encode(computed)}, the server says ${rootText}`,
      };
    }
    return {
      ok: true,
      root: rootText,
      message: `inclusion proof verified ✓ against root ${rootText} (tree size ${size})`,
    };
  } catch (e) {
    return { ok: false, root: null, message: `inclusion proof rejected: ${e.message}` };
  }
}
