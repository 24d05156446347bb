// imgpipe's page: submit a CSV through /v1/requests, then follow the request over its
// Server-Sent Events, resuming with Last-Event-ID after a dropped connection. The stream
// is read with fetch (not EventSource) so that the token travels in a header, never in
// a URL. The token and the list of recent requests live in sessionStorage: this tab only.

const TERMINAL = new Set([
  "REQUEST_STATE_COMPLETED",
  "REQUEST_STATE_PARTIALLY_COMPLETED",
  "REQUEST_STATE_FAILED",
  "REQUEST_STATE_CANCELLED",
]);
const TOKEN_KEY = "imgpipe.token";
const RECENT_KEY = "imgpipe.recent";
const RECENT_MAX = 20;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 5000;
const REFRESH_MS = 2000; // at most one status read this often while images change
const RETRYABLE = new Set([429, 502, 503, 504]);

const $ = (id) => document.getElementById(id);
const short = (state) => (state || "").replace(/^(REQUEST|IMAGE)_STATE_/, "");

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const { error } = await response.json();
    message = `${error.code}: ${error.message}`;
    for (const violation of error.field_violations || []) {
      message += `\n${violation.field}: ${violation.description}`;
    }
  } catch {
    // not a JSON error: the status line says it
  }
  return new ApiError(response.status, message);
}

async function api(path, init = {}) {
  const response = await fetch(path, {
    ...init,
    cache: "no-store",
    headers: { ...authHeaders(), ...(init.headers || {}) },
  });
  if (!response.ok) {
    throw await apiError(response);
  }
  return response;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// -- recent requests (this tab) ----------------------------------------------------------

function recent() {
  try {
    return JSON.parse(sessionStorage.getItem(RECENT_KEY) || "[]");
  } catch {
    return [];
  }
}

function remember(entry) {
  const others = recent().filter((item) => item.id !== entry.id);
  const previous = recent().find((item) => item.id === entry.id) || {};
  const list = [{ ...previous, ...entry }, ...others].slice(0, RECENT_MAX);
  sessionStorage.setItem(RECENT_KEY, JSON.stringify(list));
  renderRecent();
}

function renderRecent() {
  const list = $("recent");
  list.replaceChildren();
  for (const item of recent()) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = item.id;
    button.addEventListener("click", () => watch(item.id));
    const li = document.createElement("li");
    li.append(button, ` — ${short(item.state) || "?"}, ${item.images ?? "?"} images`);
    list.append(li);
  }
}

// -- the live view of one request --------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function bytes(value) {
  return value ? value.toLocaleString("en") : "—";
}

class RequestView {
  constructor(id) {
    this.id = id;
    this.sequence = 0;
    this.state = "";
    this.rows = new Map(); // "serial/index" -> ImageRow
    this.refreshing = null;
  }

  async run(signal) {
    await this.refresh(signal);
    let delay = RETRY_FIRST_MS;
    while (!TERMINAL.has(this.state) && !signal.aborted) {
      try {
        await this.stream(signal);
        delay = RETRY_FIRST_MS;
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && !RETRYABLE.has(error.status)) throw error;
      }
      if (TERMINAL.has(this.state) || signal.aborted) break;
      connection(`connection lost; resuming after event ${this.sequence}…`);
      await sleep(delay, signal);
      delay = Math.min(2 * delay, RETRY_MAX_MS);
      await this.refresh(signal);
    }
    if (signal.aborted) return;
    await this.refresh(signal); // the final bytes of every image
    connection("");
    $("download").disabled = !TERMINAL.has(this.state);
  }

  async stream(signal) {
    const resume = this.sequence > 0 ? { "Last-Event-ID": String(this.sequence) } : {};
    const response = await fetch(`/v1/requests/${this.id}/events`, {
      signal,
      cache: "no-store",
      headers: { ...authHeaders(), ...resume, Accept: "text/event-stream" },
    });
    if (response.status === 204) {
      // Nothing after our sequence: the request is done. Its final state follows.
      await this.refresh(signal);
      return;
    }
    if (!response.ok) throw await apiError(response);
    connection("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.event(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  event(block) {
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // a keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") data.push(value);
    }
    if (data.length) this.apply(JSON.parse(data.join("\n")));
  }

  apply(message) {
    const sequence = Number(message.sequence);
    this.sequence = Math.max(this.sequence, sequence);
    this.show(message.state, message.progress);
    if (message.image) {
      const { serial_number: serial, index, state, error, output_url: outputUrl } = message.image;
      const row = this.rows.get(`${serial}/${index}`);
      if (row && sequence > row.sequence) {
        row.sequence = sequence;
        row.setState(state, error, outputUrl);
      }
    }
    this.scheduleRefresh(); // for the bytes, and what a snapshot summed up
  }

  scheduleRefresh() {
    if (this.refreshing) return;
    this.refreshing = setTimeout(() => {
      this.refreshing = null;
      if (current && current.view === this) {
        this.refresh(current.abort.signal).catch(() => {});
      }
    }, REFRESH_MS);
  }

  // GetStatus as it stands, merged with what the stream told us since: an image whose
  // newest event is later than the status (its `sequence`) keeps what that event said.
  async refresh(signal) {
    const response = await api(`/v1/requests/${this.id}`, { signal });
    const status = await response.json();
    const sequence = Number(status.sequence || 0);
    this.render(status, sequence);
    if (sequence >= this.sequence) this.show(status.state, status.progress);
  }

  show(state, progress = {}) {
    const changed = state !== this.state;
    this.state = state;
    $("state").textContent = short(state);
    const total = progress.total_images || 0;
    const succeeded = progress.succeeded_images || 0;
    const failed = progress.failed_images || 0;
    const cancelled = progress.cancelled_images || 0;
    const done = succeeded + failed + cancelled;
    $("progress").max = total || 1;
    $("progress").value = done;
    $("progress-text").textContent =
      `${done} of ${total} images done: ${succeeded} succeeded, ${failed} failed` +
      (cancelled ? `, ${cancelled} cancelled` : "");
    if (changed) remember({ id: this.id, state, images: total });
  }

  render(status, sequence) {
    const rows = new Map();
    for (const product of status.products || []) {
      (product.images || []).forEach((image, index) => {
        const key = `${product.serial_number}/${index}`;
        const newer = this.rows.get(key);
        const row = new ImageRow(product, index, image, sequence);
        if (newer && newer.sequence > sequence) {
          row.sequence = newer.sequence;
          row.setState(newer.state, newer.error, newer.outputUrl);
        }
        rows.set(key, row);
      });
    }
    this.rows = rows;
    $("images").tBodies[0].replaceChildren(...[...rows.values()].map((row) => row.tr));
  }
}

// One image's row of the table.
class ImageRow {
  constructor(product, index, image, sequence) {
    this.sequence = sequence;
    this.inputBytes = Number(image.input_bytes || 0);
    this.outputBytes = Number(image.output_bytes || 0);
    this.stateCell = cell("");
    this.inputCell = cell("", "num");
    this.outputCell = cell("", "num");
    this.errorCell = cell("", "error");
    this.tr = document.createElement("tr");
    this.tr.append(
      cell(String(product.serial_number), "num"),
      cell(product.product_name),
      cell(String(index), "num"),
      cell(image.input_url, "url"),
      this.stateCell,
      this.inputCell,
      this.outputCell,
      this.errorCell,
    );
    this.setState(image.state, image.error, image.output_url);
  }

  setState(state, error, outputUrl) {
    this.state = state;
    this.error = error || "";
    this.outputUrl = outputUrl || "";
    this.stateCell.textContent = short(state);
    this.stateCell.className = `state-${state}`;
    this.errorCell.textContent = this.error;
    const succeeded = state === "IMAGE_STATE_SUCCEEDED";
    this.inputCell.textContent = bytes(succeeded && this.inputBytes);
    const output = bytes(succeeded && this.outputBytes);
    if (this.outputUrl) {
      const link = document.createElement("a");
      link.href = this.outputUrl;
      link.textContent = output === "—" ? "output" : output;
      this.outputCell.replaceChildren(link);
    } else {
      this.outputCell.textContent = output;
    }
  }
}

function connection(text) {
  $("connection").textContent = text;
}

let current = null; // {view, abort}

async function watch(id) {
  if (current) current.abort.abort();
  const view = new RequestView(id);
  const abort = new AbortController();
  current = { view, abort };
  $("watch").hidden = false;
  $("request-id").textContent = id;
  $("state").textContent = "…";
  $("download").disabled = true;
  $("images").tBodies[0].replaceChildren();
  connection("connecting…");
  try {
    await view.run(abort.signal);
  } catch (error) {
    if (!abort.signal.aborted) connection(error.message);
  }
}

async function download() {
  const id = current.view.id;
  try {
    const response = await api(`/v1/requests/${id}/result.csv`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `${id}-result.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    connection(error.message);
  }
}

// -- the form ----------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  const error = $("form-error");
  error.textContent = "";
  const file = $("file").files[0];
  if (!file) {
    error.textContent = "Choose a CSV file first.";
    return;
  }
  const data = new FormData();
  data.append("file", file, file.name);
  for (const name of ["quality", "webhook_url"]) {
    const value = $(name).value.trim();
    if (value) data.append(name, value);
  }
  $("submit").disabled = true;
  try {
    const response = await api("/v1/requests", { method: "POST", body: data });
    const submitted = await response.json();
    remember({
      id: submitted.request_id,
      state: "REQUEST_STATE_QUEUED",
      images: submitted.image_count,
    });
    watch(submitted.request_id);
  } catch (failure) {
    error.textContent = failure.message;
  } finally {
    $("submit").disabled = false;
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) $("file").files = event.dataTransfer.files;
  });
}

function setUpToken() {
  if (document.body.dataset.auth !== "required") return;
  $("token-row").hidden = false;
  const input = $("token");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  input.addEventListener("input", () => {
    const token = input.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  });
}

setUpToken();
setUpDropZone();
renderRecent();
$("submit-form").addEventListener("submit", submit);
$("download").addEventListener("click", download);
