// Optional helpers: the console is readable without this script.
"use strict";

// Ask before state changes that are hard to undo (forms carrying data-confirm).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Live refresh of the overview: re-fetch this page and swap its figures and chart.
document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("live-refresh");
  const region = document.getElementById("live-region");
  if (!toggle || !region) return;
  toggle.closest("label").hidden = false;
  toggle.checked = window.localStorage.getItem("kmsg-console-live") === "1";
  let timer = null;
  const refresh = async () => {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("live-region");
    if (fresh) region.replaceChildren(...fresh.childNodes);
  };
  const apply = () => {
    window.localStorage.setItem("kmsg-console-live", toggle.checked ? "1" : "0");
    if (timer) window.clearInterval(timer);
    timer = toggle.checked ? window.setInterval(refresh, 10000) : null;
  };
  toggle.addEventListener("change", apply);
  apply();
});
