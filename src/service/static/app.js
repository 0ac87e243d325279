// Cashier page: upload a photo -> POST /checkout -> draw the boxes on a canvas and fill in the receipt.
// Plain DOM, no framework, no CDN. Text from the server goes through textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const money = (v) => (v === null || v === undefined ? "-" : Number(v).toFixed(2));
const MAX_CANVAS_WIDTH = 800;

function setStatus(el, text, cls) {
  el.textContent = text;
  el.className = cls || "";
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this file"));
    img.src = URL.createObjectURL(file);
  });
}

function drawBox(ctx, box, scale, colour, label, dashed) {
  const [x1, y1, x2, y2] = box.map((v) => v * scale);
  ctx.save();
  ctx.strokeStyle = colour;
  ctx.lineWidth = 3;
  if (dashed) ctx.setLineDash([6, 4]);
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  ctx.font = "13px sans-serif";
  const w = ctx.measureText(label).width + 6;
  ctx.fillStyle = colour;
  ctx.fillRect(x1, Math.max(0, y1 - 17), w, 17);
  ctx.fillStyle = "#fff";
  ctx.fillText(label, x1 + 3, Math.max(13, y1 - 4));
  ctx.restore();
}

function drawResult(img, receipt) {
  const canvas = $("overlay");
  const scale = Math.min(1, MAX_CANVAS_WIDTH / img.naturalWidth);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const drawn = [];
  for (const d of receipt.detections) {
    drawBox(ctx, d.box, scale, "#00a000", d.name + " " + d.score.toFixed(2), false);
    drawn.push({ kind: "item", sku: d.sku, box: d.box });
  }
  for (const u of receipt.uncertain || []) {
    drawBox(ctx, u.box, scale, "#c00070", "uncertain: " + u.candidates.map((c) => c.name || c.sku).join(" or "),
            true);
    drawn.push({ kind: "uncertain", sku: null, box: u.box });
  }
  for (const u of receipt.unknown) {
    drawBox(ctx, u.box, scale, "#e07000", "unknown", true);
    drawn.push({ kind: "unknown", sku: null, box: u.box });
  }
  // What was drawn, in image pixels: lets tests and support staff compare the page with the API.
  canvas.dataset.boxes = JSON.stringify(drawn);
  canvas.dataset.scale = String(scale);
  canvas.dataset.state = "done";
}

function fillReceipt(receipt) {
  const body = $("receipt-lines");
  body.replaceChildren();
  for (const line of receipt.items) {
    const tr = document.createElement("tr");
    tr.className = "line";
    tr.dataset.sku = line.sku;
    for (const [text, num] of [[line.name || line.sku, false], [line.count, true],
                               [money(line.unit_price), true], [money(line.line_total), true]]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (num) td.className = "num";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("total").textContent = money(receipt.total);
  $("incomplete").hidden = receipt.complete;
  // Uncertain: above the threshold but a look-alike scores almost as well. Not priced: the cashier picks.
  const uncertain = $("uncertain");
  uncertain.replaceChildren();
  for (const u of receipt.uncertain || []) {
    const li = document.createElement("li");
    li.dataset.skus = JSON.stringify(u.candidates.map((c) => c.sku));
    li.textContent = u.candidates.map((c) => `${c.name || c.sku} (${c.price == null ? "no price" : money(c.price)}, ` +
      `score ${c.score.toFixed(2)})`).join(" or ") + ` - margin ${u.margin.toFixed(3)}, not priced`;
    uncertain.appendChild(li);
  }
  $("uncertain-block").hidden = !(receipt.uncertain || []).length;
  const ul = $("unknown");
  ul.replaceChildren();
  for (const u of receipt.unknown) {
    const li = document.createElement("li");
    const guess = u.best_guess ? ` (best guess: ${u.best_guess.name || u.best_guess.sku}, ` +
      `score ${u.best_guess.score.toFixed(2)})` : "";
    li.textContent = `box ${u.box.map((v) => Math.round(v)).join(", ")}${guess}`;
    ul.appendChild(li);
  }
}

async function checkout() {
  const file = $("photo").files[0];
  const status = $("status");
  if (!file) {
    setStatus(status, "Choose a photo first.", "warn");
    return;
  }
  $("overlay").dataset.state = "busy";
  setStatus(status, "Recognising...");
  const form = new FormData();
  form.append("image", file);
  try {
    const resp = await fetch("/checkout", { method: "POST", body: form });
    if (!resp.ok) {
      $("overlay").dataset.state = "error";
      setStatus(status, "Error: " + (await errorText(resp)), "error");
      return;
    }
    const receipt = await resp.json();
    const img = await loadImage(file);
    drawResult(img, receipt);
    fillReceipt(receipt);
    setStatus(status, `${receipt.detections.length} recognised, ${(receipt.uncertain || []).length} uncertain, ` +
      `${receipt.unknown.length} unknown ` +
      `(${Math.round(receipt.timings.total_ms)} ms)`);
  } catch (err) {
    $("overlay").dataset.state = "error";
    setStatus(status, "Error: " + err.message, "error");
  }
}

// Gallery changes need the admin key (Authorization: Bearer). It is kept in sessionStorage: this tab only,
// gone when the tab closes; never in a cookie, never in localStorage.
const KEY_STORAGE = "recognition-admin-key";

function adminHeaders() {
  const key = $("admin-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function refreshGallery() {
  const resp = await fetch("/gallery?limit=200");
  if (!resp.ok) {
    setStatus($("gallery-summary"), "Error: " + (await errorText(resp)), "error");
    return;
  }
  const data = await resp.json();
  const thr = data.threshold === null ? "none" : data.threshold.toFixed(3);
  $("gallery-summary").textContent = `${data.products} products, ${data.images} images, threshold ${thr}`;
  const body = $("gallery-rows");
  body.replaceChildren();
  for (const p of data.items) {
    const tr = document.createElement("tr");
    for (const [text, num] of [[p.sku, false], [p.name || "", false], [money(p.price), true], [p.images, true]]) {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (num) td.className = "num";
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = "Remove";
    btn.addEventListener("click", async () => {
      const r = await fetch("/gallery?sku=" + encodeURIComponent(p.sku), { method: "DELETE", headers: adminHeaders() });
      if (!r.ok) setStatus($("add-status"), "Error: " + (await errorText(r)), "error");
      await refreshGallery();
    });
    td.appendChild(btn);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

async function addProduct(event) {
  event.preventDefault();
  const form = new FormData($("add-form"));
  for (const key of ["name", "category", "price"]) {
    if (form.get(key) === "") form.delete(key); // optional fields: send nothing rather than ""
  }
  setStatus($("add-status"), "Adding...");
  const resp = await fetch("/gallery", { method: "POST", body: form, headers: adminHeaders() });
  if (!resp.ok) {
    setStatus($("add-status"), "Error: " + (await errorText(resp)), "error");
    return;
  }
  const r = await resp.json();
  setStatus($("add-status"), `Added ${r.added} image(s) (${r.skipped} already there); gallery: ${r.count} images.`);
  $("add-form").reset();
  await refreshGallery();
}

$("checkout-btn").addEventListener("click", checkout);
$("photo").addEventListener("change", checkout);
$("add-form").addEventListener("submit", addProduct);
$("admin-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
$("admin-key").addEventListener("change", () => sessionStorage.setItem(KEY_STORAGE, $("admin-key").value.trim()));
refreshGallery();
