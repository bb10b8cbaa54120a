// Optional helper for pages that prefer one API call to one <img> per row:
//   <span data-mor-device-id="12"></span> ...
//   <script src="/mor-status/embed.js" data-api="/mor-status/api/v1/devices/status?ids=12,13&exp=...&sig=..."></script>
// Without data-api (widget without a secret) the URL is built from this script's own address.
// Every element with data-mor-device-id gets a bullet with a tooltip; nothing is
// written as HTML, so device names cannot inject markup into the page.
(function () {
  "use strict";
  var script = document.currentScript;
  var COLOURS = {
    ok: ["#22a33a", "#16762a"], lagged: ["#f5c400", "#b08c00"],
    unreachable: ["#db2317", "#9c170f"], unknown: ["#000000", "#000000"],
    unmonitored: ["#ffffff", "#8c8c8c"], none: ["none", "#9a9a9a"]
  };
  var LABELS = {
    ok: "OK", lagged: "LAGGED", unreachable: "UNREACHABLE", unknown: "UNKNOWN",
    unmonitored: "Unmonitored", none: "NO STATUS"
  };
  var NS = "http://www.w3.org/2000/svg";

  function bullet(kind, title) {
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", "16"); svg.setAttribute("height", "16");
    svg.setAttribute("viewBox", "0 0 16 16");
    svg.setAttribute("class", "mor-bullet mor-bullet-" + kind);
    var tip = document.createElementNS(NS, "title");
    tip.textContent = title;
    var circle = document.createElementNS(NS, "circle");
    var ring = kind === "none";
    circle.setAttribute("cx", "8"); circle.setAttribute("cy", "8");
    circle.setAttribute("r", ring ? "5.5" : "6.5");
    circle.setAttribute("fill", COLOURS[kind][0]);
    circle.setAttribute("stroke", COLOURS[kind][1]);
    circle.setAttribute("stroke-width", ring ? "2" : "1");
    svg.appendChild(tip); svg.appendChild(circle);
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
          var kind = d && COLOURS[d.status] ? d.status : "none";
          var title = d && d.reg_status ? d.reg_status : LABELS[kind];
          if (d && d.stale) { title += " (data is old)"; }
          while (node.firstChild) { node.removeChild(node.firstChild); }
          node.appendChild(bullet(kind, title));
          node.setAttribute("title", title);
        });
      });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", fill);
  } else {
    fill();
  }
})();
