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
