// Herald console: progressive enhancement only. Without this script every page still reads
// and every button still works; with it, countdowns tick, lists refresh in place and drafts copy.
(function () {
  "use strict";
  var skew = Number(document.body.dataset.now || Date.now()) - Date.now();
  function fmt(ms) {
    var s = Math.floor(Math.max(0, ms) / 1000);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function tick() {
    var now = Date.now() + skew;
    document.querySelectorAll("[data-due]").forEach(function (el) {
      var left = Number(el.dataset.due) - now;
      el.textContent = left > 0 ? "due in " + fmt(left) : "overdue by " + fmt(-left);
      el.classList.toggle("overdue", left <= 0);
    });
  }
  function refresh() {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      fetch(el.dataset.refresh, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { el.innerHTML = html; tick(); } })
        .catch(function () {});
    });
  }
  document.querySelectorAll("[data-copy]").forEach(function (b) {
    b.hidden = false;
    b.addEventListener("click", function () {
      var text = document.getElementById(b.dataset.copy).textContent;
      navigator.clipboard.writeText(text).then(function () { b.textContent = "Copied"; });
    });
  });
  document.addEventListener("submit", function (e) {
    var b = e.submitter || e.target.querySelector("[data-confirm]");
    if (b && b.dataset && b.dataset.confirm && !window.confirm(b.dataset.confirm)) e.preventDefault();
  });
  tick();
  setInterval(tick, 1000);
  setInterval(refresh, Number(document.body.dataset.refreshMs || 5000));
})();
