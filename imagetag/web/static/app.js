// The search form submits itself when a filter changes, so the URL always carries the whole
// query; the slider shows its value while it moves and submits when it is let go.
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("search");
  if (!form) { return; }
  var slider = document.getElementById("min");
  var shown = document.getElementById("min-value");
  if (slider && shown) {
    slider.addEventListener("input", function () { shown.textContent = Number(slider.value).toFixed(2); });
  }
  form.addEventListener("change", function () { form.submit(); });
});

// Upload results and an image's status page: ask /api/ingest/<id> until each image has an
// outcome (tagged, review, dead), every two seconds, for at most ten minutes.
document.addEventListener("DOMContentLoaded", function () {
  var waiting = Array.prototype.slice.call(document.querySelectorAll("[data-poll]"));
  if (!waiting.length) { return; }
  var started = Date.now();
  function poll() {
    waiting = waiting.filter(function (el) { return ["sent", "unknown"].indexOf(el.textContent) >= 0; });
    if (!waiting.length || Date.now() - started > 600000) { return; }
    waiting.forEach(function (el) {
      fetch(el.getAttribute("data-poll"), {credentials: "same-origin", cache: "no-store"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) {
          if (!s || s.state === el.textContent) { return; }
          el.textContent = s.state;
          el.setAttribute("data-state", s.state);
          var detail = document.getElementById("state-detail");
          if (detail && s.state !== "sent") { window.location.reload(); }
        })
        .catch(function () {});
    });
    window.setTimeout(poll, 2000);
  }
  window.setTimeout(poll, 1000);
});
