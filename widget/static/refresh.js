// Re-reads this same (signed) URL every data-refresh seconds and swaps the content in
// place, so the MOR page around the iframe never reloads. No inline code: CSP allows
// only scripts from this origin.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh"), 10);
  if (!(seconds > 0) || !window.fetch || !window.DOMParser) { return; }
  function refresh() {
    fetch(window.location.href, { cache: "no-store", credentials: "omit" })
      .then(function (response) {
        return response.text().then(function (text) { return { ok: response.ok, text: text }; });
      })
      .then(function (answer) {
        // DOMParser never runs scripts; the server already escaped every text.
        var doc = new DOMParser().parseFromString(answer.text, "text/html");
        var fresh = doc.getElementById("content");
        var current = document.getElementById("content");
        if (fresh && current) { current.replaceWith(document.adoptNode(fresh)); }
        document.body.classList.toggle("refresh-failed", !answer.ok);
        // an expired link (410) will not become valid again: stop asking
        if (answer.ok) { window.setTimeout(refresh, seconds * 1000); }
      })
      .catch(function () {
        document.body.classList.add("refresh-failed");
        window.setTimeout(refresh, seconds * 1000);
      });
  }
  window.setTimeout(refresh, seconds * 1000);
})();
