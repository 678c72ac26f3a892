// POST /v1/segment with upload progress, cancellation, and errors a person can act on. XMLHttpRequest,
// not fetch: only XHR reports upload progress in browsers today, and abort() cancels a run cleanly.

/** A run that was cancelled (by the user, or by a newer run): not an error, nothing to show. */
export class Cancelled extends Error {}

/** An answer that is not a label map, with a one-line message for the status line. */
export class ServerError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

function detailOf(xhr) {
  try {
    const body = JSON.parse(new TextDecoder().decode(xhr.response));
    const d = body && body.detail;
    if (typeof d === "string") return d.slice(0, 300);
  } catch { /* not JSON */ }
  return xhr.statusText || "no explanation given";
}

function refusal(xhr) {
  const s = xhr.status, detail = detailOf(xhr);
  if (s === 413) return new ServerError(`The server refused the upload as too large: ${detail}.`, s);
  if (s === 429 || s === 503) {
    const after = xhr.getResponseHeader("Retry-After");
    return new ServerError(`The server is busy (HTTP ${s}): ${detail}.${after ? ` Try again in ${after} s.` : " Try again shortly."}`, s);
  }
  if (s >= 500) return new ServerError(`The server failed on this request (HTTP ${s}): ${detail}.`, s);
  return new ServerError(`The server refused the request (HTTP ${s}): ${detail}.`, s);
}

/**
 * Send `body` (FormData) to `url`. Calls onUploadProgress(fraction) while sending, onUploaded() when
 * the server has the whole body (it is segmenting from then on). `signal` is {aborted, onabort}.
 * Resolves to {bytes: ArrayBuffer, headers: {name: value}}.
 */
export function postForLabels(url, body, { onUploadProgress, onUploaded, signal }) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = "arraybuffer";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable && onUploadProgress) onUploadProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onUploaded && onUploaded();
    xhr.onload = () => {
      if (xhr.status !== 200) return reject(refusal(xhr));
      const headers = {};
      for (const name of ["x-encseg-trained-for-scheme", "x-encseg-scheme", "content-type"]) headers[name] = xhr.getResponseHeader(name);
      resolve({ bytes: xhr.response, headers });
    };
    xhr.onerror = () => reject(new ServerError(
      `Lost contact with the server at ${location.origin}: it did not answer (stopped, restarted or unreachable). ` +
      "Nothing came back and your key stayed in this page; check that the server runs, then run again."));
    xhr.ontimeout = () => reject(new ServerError("The server took too long to answer; nothing came back."));
    xhr.onabort = () => reject(new Cancelled("cancelled"));
    signal.onabort = () => xhr.abort();
    if (signal.aborted) return reject(new Cancelled("cancelled"));
    xhr.send(body);
  });
}
