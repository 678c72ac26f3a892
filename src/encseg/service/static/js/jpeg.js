// JPEG transport (docs/encryption-format.md section 10): placeholder until the service accepts JPEG.
export const DEFAULT_QUALITY = 90;

/** Why the page cannot offer JPEG uploads to this server, or null when it can. */
export function unavailable(info) {
  return "this server does not accept JPEG ciphertexts";
}

export async function encodeCiphertext() {
  throw new Error("JPEG transport is not available");
}
