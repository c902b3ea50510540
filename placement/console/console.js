// The operator's console: sign-in, then one page at a time (#fleet, #classes,
// #decisions, #policy, #simulate), each a module with render(root) -> stop().
import { api, flash, h, setToken, token } from "/console/util.js";

const PAGES = ["fleet", "classes", "decisions", "policy", "simulate"];
const root = document.getElementById("page");
const login = document.getElementById("login");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const logout = document.getElementById("logout");
let stop = null;

function showLogin(message = "") {
  if (stop) stop();
  stop = null;
  root.replaceChildren();
  nav.hidden = true;
  logout.hidden = true;
  who.textContent = "";
  login.hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

async function show() {
  if (!token()) return showLogin();
  login.hidden = true;
  nav.hidden = false;
  logout.hidden = false;
  const name = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "fleet";
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.page === name);
  if (stop) stop();
  stop = null;
  root.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const mod = await import(`/console/${name}.js`);
  root.replaceChildren();
  root.dataset.page = name;
  stop = mod.render(root) || null;
}

login.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  setToken(input.value.trim());
  input.value = "";
  try {
    await whoami();
  } catch (err) {
    setToken("");
    return showLogin(err.status === 401 ? "That token is not an operator's." : String(err.message));
  }
  show();
});

logout.addEventListener("click", () => { setToken(""); showLogin(); });
window.addEventListener("hashchange", show);
window.addEventListener("console:unauthorized", () => {
  setToken("");
  showLogin("Signed out: the token was refused.");
});
window.addEventListener("unhandledrejection", (ev) => flash(String(ev.reason?.message || ev.reason), true));
async function whoami() {
  const me = await api("/v1/console/whoami");
  who.textContent = `operator: ${me.operator}`;
}

if (token()) whoami().catch(() => {});
show();
