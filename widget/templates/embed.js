// MOR's pages load this one script from the widget (it is not signed: it holds no device data).
//
// 1. Status frames fit their content. Every iframe of the widget (the device edit page's
//    status box, the legends, the servers page) reports its content's height; this script
//    sets that frame's height. Only messages from the widget's own origin, sent by a frame
//    on this page, are used.
//      <iframe class="mor-regstatus" src="/mor-status/devices/12/status?exp=...&sig=..."
//              title="Registration status" height="150" width="100%"></iframe>
//      <script src="/mor-status/embed.js" defer></script>
//
// 2. Optional, for device lists: one API call a page instead of one <img> per row.
//      <span data-mor-device-id="12"></span> ...
//      <script src="/mor-status/embed.js" data-api="/mor-status/api/v1/devices/status?ids=12,13&exp=...&sig=..."></script>
//    Without data-api (a widget without a secret) the URL is built from this script's own
//    address. Each element gets the bullet drawn by the widget's pages, its status as
//    tooltip and accessible name; nothing is written as HTML, so device names cannot
//    inject markup into the page.
(function () {
  "use strict";
  var script = document.currentScript;
  // the widget's bullets.py: drawing, labels and explanations per status
  var BULLETS = {{ bullets | tojson }};
  var NS = "http://www.w3.org/2000/svg";
  var HEIGHT_LIMIT = 5000;
  var widgetOrigin = script ? new URL(script.src, document.baseURI).origin : null;

  function tooltip(kind, regStatus, stale) {
    var head = regStatus && BULLETS[kind].headed_by_reg_status ? regStatus : BULLETS[kind].label;
    var text = head + ": " + BULLETS[kind].explanation;
    return stale ? text + " The data is old." : text;
  }

  function bullet(kind, title) {
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", "16"); svg.setAttribute("height", "16");
    svg.setAttribute("viewBox", "0 0 16 16");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    svg.setAttribute("class", "mor-bullet mor-bullet-" + kind);
    var tip = document.createElementNS(NS, "title");
    tip.textContent = title;
    svg.appendChild(tip);
    BULLETS[kind].parts.forEach(function (part) {
      var element = document.createElementNS(NS, part[0]);
      Object.keys(part[1]).forEach(function (name) { element.setAttribute(name, part[1][name]); });
      svg.appendChild(element);
    });
    return svg;
  }

  function fill() {
    var nodes = document.querySelectorAll("[data-mor-device-id]");
    if (!nodes.length) { return; }
    var api = script && script.getAttribute("data-api");
    if (!api) {
      var ids = [];
      nodes.forEach(function (node) { ids.push(node.getAttribute("data-mor-device-id")); });
      api = new URL("api/v1/devices/status?ids=" + ids.join(","), script.src).href;
    }
    fetch(api, { credentials: "omit" })
      .then(function (response) { return response.ok ? response.json() : { devices: [] }; })
      .then(function (data) {
        var byId = {};
        data.devices.forEach(function (d) { byId[String(d.id)] = d; });
        nodes.forEach(function (node) {
          var d = byId[node.getAttribute("data-mor-device-id")];
          var kind = d && BULLETS[d.status] ? d.status : "none";
          var title = tooltip(kind, d && d.reg_status, d && d.stale);
          while (node.firstChild) { node.removeChild(node.firstChild); }
          node.appendChild(bullet(kind, title));
          node.setAttribute("title", title);
        });
      });
  }

  function fit(event) {
    if (event.origin !== widgetOrigin || !event.data || typeof event.data !== "object") { return; }
    var height = event.data.morRegstatusHeight;
    if (typeof height !== "number" || !(height > 0)) { return; }
    var frames = document.getElementsByTagName("iframe");
    for (var i = 0; i < frames.length; i++) {
      if (frames[i].contentWindow === event.source) {
        frames[i].style.height = Math.min(Math.ceil(height), HEIGHT_LIMIT) + "px";
        return;
      }
    }
  }

  window.addEventListener("message", fit);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", fill);
  } else {
    fill();
  }
})();
