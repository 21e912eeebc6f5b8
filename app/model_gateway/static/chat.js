// Chat page of the model gateway: lists the models, then streams chat completions from this same origin.
"use strict";

const API_KEY_STORAGE = "model-gateway-api-key";

const modelSelect = document.getElementById("model");
const apiKeyInput = document.getElementById("api-key");
const conversation = document.getElementById("conversation");
const statusLine = document.getElementById("status");
const composer = document.getElementById("composer");
const messageInput = document.getElementById("message");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const configuredModel = document.querySelector('meta[name="gateway-model"]').content;

const history = [];
let inFlight = null;

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (apiKeyInput.value) headers.Authorization = `Bearer ${apiKeyInput.value}`;
  return headers;
}

function setStatus(text) {
  statusLine.textContent = text;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? body.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function loadModels() {
  setStatus("Loading models…");
  let response;
  try {
    response = await fetch("v1/models", { headers: requestHeaders() });
  } catch (error) {
    setStatus(`Cannot reach the gateway: ${error.message}`);
    return;
  }
  if (!response.ok) {
    setStatus(response.status === 401 ? "Enter the API key to continue." : `Cannot list models: ${await errorMessage(response)}`);
    return;
  }
  const ids = (await response.json()).data.map((model) => model.id);
  modelSelect.replaceChildren(...ids.map((id) => new Option(id, id)));
  modelSelect.value = ids.includes(configuredModel) ? configuredModel : ids[0] ?? "";
  setStatus(ids.length ? "" : "The model server lists no models.");
}

function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = `message ${role}`;
  element.textContent = text;  // never innerHTML: model output is untrusted text
  conversation.append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

// Yields the data of each server-sent event as it arrives; events end with a blank line.
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let boundary;
    while ((boundary = /\r?\n\r?\n/.exec(buffer))) {
      const event = buffer.slice(0, boundary.index);
      buffer = buffer.slice(boundary.index + boundary[0].length);
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
}

async function send(event) {
  event.preventDefault();
  const text = messageInput.value.trim();
  if (!text || inFlight) return;
  messageInput.value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.classList.add("pending");
  inFlight = new AbortController();
  setBusy(true);
  setStatus("");
  let answer = "";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: requestHeaders(),
      body: JSON.stringify({ model: modelSelect.value, messages: history, stream: true }),
      signal: inFlight.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of serverSentEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        answer += delta;
        reply.textContent = answer;
      }
    }
    history.push({ role: "assistant", content: answer });
  } catch (error) {
    // A failed or stopped exchange leaves the history, so the next message is not sent after a broken turn.
    history.pop();
    reply.classList.add("error");
    reply.textContent = answer;
    setStatus(error.name === "AbortError" ? "Stopped." : `Error: ${error.message}`);
  } finally {
    reply.classList.remove("pending");
    inFlight = null;
    setBusy(false);
    messageInput.focus();
  }
}

composer.addEventListener("submit", send);
messageInput.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey) return;
  event.preventDefault();
  composer.requestSubmit();
});
stopButton.addEventListener("click", () => inFlight?.abort());
apiKeyInput.addEventListener("change", () => {
  sessionStorage.setItem(API_KEY_STORAGE, apiKeyInput.value);
  loadModels();
});

apiKeyInput.value = sessionStorage.getItem(API_KEY_STORAGE) ?? "";
loadModels();
