// The page talks to the same API as any client; nothing here holds logic the API lacks.
"use strict";

const $ = (sel) => document.querySelector(sel);
const keyInput = $("#api-key");
keyInput.value = sessionStorage.getItem("newarrivals-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("newarrivals-key", keyInput.value);
  loadUsers();
});

function headers() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

function showError(message) {
  const banner = $("#banner");
  banner.textContent = message;
  banner.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    throw new Error(`${response.status} on ${path}: ${detail}`);
  }
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function photo(productId) {
  const img = el("img", { src: `/v1/products/${encodeURIComponent(productId)}/photo`, alt: productId, loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "nophoto" }, "no photo")));
  return img;
}

function card(productId, title, lines = [], extraClass = "") {
  const node = el("div", { class: `card ${extraClass}`.trim(), "data-product": productId },
    photo(productId), el("div", { class: "title" }, title || productId));
  for (const [cls, text] of lines) node.append(el("div", { class: cls }, text));
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

// ------------------------------------------------------------------ tabs

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${tab.dataset.view}`;
    if (tab.dataset.view === "status") loadStatus();
    if (tab.dataset.view === "shopper" && !$("#sh-user").options.length) loadUsers();
  });
}

// ------------------------------------------------------------------ launch planner

$("#planner-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const form = new FormData();
  for (const id of ["title", "description", "category", "price"]) {
    const value = $(`#pl-${id}`).value.trim();
    if (value) form.append(id, value);
  }
  form.append("audience_size", $("#pl-audience").value);
  form.append("reach_k", $("#pl-reach-k").value);
  const file = $("#pl-photo").files[0];
  if (file) form.append("photo", file);
  $("#pl-submit").disabled = true;
  try {
    renderPlanner(await api("/v1/cold-start/upload", { method: "POST", body: form }));
  } catch (err) {
    showError(err.message);
  } finally {
    $("#pl-submit").disabled = false;
  }
});

function renderPlanner(result) {
  $("#planner-result").hidden = false;
  const reach = result.reach;
  $("#pl-reach").textContent =
    `Expected reach: ${reach.users_in_top_k} of ${reach.users_considered} users ` +
    `(${(100 * reach.share).toFixed(1)}%) would see it in their top ${reach.k}; ` +
    `expected picks ${fmt(reach.expected_picks, 1)}. ` +
    `Encoded from ${[result.encoded_from_text && "text", result.encoded_from_photo && "photo"].filter(Boolean).join(" + ")}.` +
    (!result.encoded_from_photo && document.body.dataset.imageModel
      ? " Without a photo it is placed by its text alone, while the catalogue's products and " +
        "its shoppers also carry photo signal: add a photo for a comparable reach."
      : "");
  const nearest = $("#pl-nearest");
  nearest.replaceChildren(...result.nearest_products.map((p) =>
    card(p.product_id, p.title, [["meta", `${p.category} · similarity ${fmt(p.score)}`]])));
  const body = $("#pl-audience-table tbody");
  body.replaceChildren();
  for (const user of result.audience) {
    const bought = el("div", { class: "thumbs" });
    const row = el("tr", { "data-user": user.user_id },
      el("td", {}, user.user_id), el("td", {}, fmt(user.probability)),
      el("td", {}, user.in_top_k ? "yes" : "no"), el("td", {}, user.rank_if_added),
      el("td", {}, bought));
    body.append(row);
    // What they bought before needs the API key (user data); the rest of the page does not.
    api(`/v1/users/${encodeURIComponent(user.user_id)}`).then((u) => {
      const ids = (u.purchased_product_ids.length ? u.purchased_product_ids : u.recent_product_ids).slice(0, 5);
      bought.replaceChildren(...ids.map((id) => { const img = photo(id); img.title = id; return img; }));
    }).catch(() => { bought.textContent = keyInput.value ? "unavailable" : "enter the API key"; });
  }
}

// ------------------------------------------------------------------ shopper view

async function loadUsers() {
  try {
    const data = await api("/v1/users?limit=200");
    const select = $("#sh-user");
    select.replaceChildren(...data.users.map((u) =>
      el("option", { value: u.user_id }, `${u.user_id} (${u.events} events)`)));
    if (data.users.length) showShopper();
  } catch (err) {
    showError(`${err.message} — the shopper view reads user data: enter the API key.`);
  }
}

async function showShopper() {
  showError("");
  const userId = $("#sh-user").value;
  if (!userId) return;
  try {
    const user = await api(`/v1/users/${encodeURIComponent(userId)}`);
    // Every recent product the service keeps: the reasons below may name any of them.
    const history = await Promise.all(user.recent_product_ids.map((id) =>
      api(`/v1/products/${encodeURIComponent(id)}`).catch(() => ({ product_id: id, title: id, category: "" }))));
    $("#sh-history").replaceChildren(...history.map((p) =>
      card(p.product_id, p.title, [["meta", p.category]],
        user.purchased_product_ids.includes(p.product_id) ? "bought" : "")));
    const params = new URLSearchParams({ k: $("#sh-k").value, rerank: $("#sh-rerank").checked });
    if ($("#sh-new").checked && $("#sh-new-after").value) params.set("launched_after", $("#sh-new-after").value);
    const recs = await api(`/v1/users/${encodeURIComponent(userId)}/recommendations?${params}`);
    $("#sh-flags").textContent = [recs.reranked && `re-ranked by the ${recs.reranked_by}`, recs.fallback && `fallback: ${recs.fallback_reason}`]
      .filter(Boolean).join(" · ");
    $("#sh-recs").replaceChildren(...recs.items.map((item) => card(item.product_id, item.title, [
      ["meta", `score ${fmt(item.retrieval_score)} · p ${fmt(item.ranker_probability)}`],
      ["meta", item.launched_at ? `launched ${item.launched_at.slice(0, 10)}` : ""],
      ["reason", item.reason ? item.reason.text : ""],
    ])));
  } catch (err) {
    showError(err.message);
  }
}

$("#sh-refresh").addEventListener("click", showShopper);
$("#sh-user").addEventListener("change", showShopper);
$("#sh-rerank").addEventListener("change", showShopper);
$("#sh-new").addEventListener("change", showShopper);

// ------------------------------------------------------------------ status

async function loadStatus() {
  try {
    const s = await api("/v1/status");
    const rows = [
      ["Index version", s.version], ["Products", s.products], ["Users", s.users],
      ["Built at", s.built_at], ["Build time", `${fmt(s.build_seconds, 1)} s`],
      ["Image tower", s.image_model], ["Ranker loaded", s.ranker_loaded ? "yes" : "no"],
      ["Journal entries", s.journal_seq],
    ];
    $("#st-list").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v ?? "–")]));
    $("#sh-rerank").disabled = !s.ranker_loaded;
    document.body.dataset.imageModel = s.image_model || "";
    if (s.new_arrivals_after && !$("#sh-new-after").value) $("#sh-new-after").value = s.new_arrivals_after;
  } catch (err) {
    showError(err.message);
  }
}

loadStatus();
