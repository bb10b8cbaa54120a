// Tells the MOR page around this frame how tall the content is, whenever that changes
// (a refresh that adds a warning, a narrower window), so embed.js can size the frame
// without a scrollbar. The message holds one number; the receiver checks our origin.
(function () {
  "use strict";
  if (window.parent === window || !window.ResizeObserver) { return; }
  var sent = 0;
  function report() {
    var height = Math.ceil(document.body.getBoundingClientRect().height);
    if (height !== sent) {
      sent = height;
      window.parent.postMessage({ morRegstatusHeight: height }, "*");
    }
  }
  new ResizeObserver(report).observe(document.body);
  report();
})();
