// sfc_vision report: sortable and filterable tables, the circuit's hover card, edge threshold and pan/zoom. No dependencies; works from file://.
(function () {
  "use strict";
  function cellValue(row, i, numeric) {
    var td = row.cells[i];
    if (!td) return numeric ? NaN : "";
    var v = td.hasAttribute("data-v") ? td.getAttribute("data-v") : td.textContent.trim();
    return numeric ? (v === "" ? NaN : parseFloat(v)) : v.toLowerCase();
  }
  function makeSortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var numeric = th.getAttribute("data-type") === "num";
        var desc = !th.classList.contains("desc") && (numeric || th.classList.contains("asc"));
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(desc ? "desc" : "asc");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, i, numeric), y = cellValue(b, i, numeric);
          if (numeric) {  // missing values last, either way; numeric columns sort by magnitude of the signed value
            if (isNaN(x)) return isNaN(y) ? 0 : 1;
            if (isNaN(y)) return -1;
            return desc ? y - x : x - y;
          }
          return desc ? (y > x ? 1 : y < x ? -1 : 0) : (x > y ? 1 : x < y ? -1 : 0);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  function makeFilter(input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    if (!table) return;
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var hay = " " + (r.getAttribute("data-search") || r.textContent).toLowerCase() + " ";
        r.hidden = !words.every(function (w) { return /^\d+$/.test(w) ? hay.indexOf(" " + w + " ") >= 0 : hay.indexOf(w) >= 0; });
      });
    });
  }
  function makeThreshold(box) {
    var input = box.querySelector("input.edge-threshold"), out = box.querySelector("output"), count = box.querySelector(".edge-count");
    if (!input) return;
    var edges = box.querySelectorAll("line.edge:not(.out)");
    input.addEventListener("input", function () {
      var t = parseFloat(input.value), n = 0;
      Array.prototype.forEach.call(edges, function (e) {
        var weak = parseFloat(e.getAttribute("data-w")) < t;
        e.classList.toggle("weak", weak);
        if (!weak) n++;
      });
      out.textContent = t.toFixed(2);
      count.textContent = n;
    });
  }
  function makeHover(card) {
    document.querySelectorAll("svg.graph a.node").forEach(function (a) {
      a.addEventListener("mouseenter", function (ev) {
        card.textContent = "";
        var title = document.createElement("b");
        title.textContent = a.getAttribute("data-label");
        card.appendChild(title);
        var facts = document.createElement("div");
        facts.textContent = "IE " + a.getAttribute("data-ie") + " · MIS " + (a.getAttribute("data-mis") || "—");
        card.appendChild(facts);
        if (a.getAttribute("data-thumb")) {
          var img = document.createElement("img");
          img.src = a.getAttribute("data-thumb");
          img.alt = "top image";
          card.appendChild(img);
        }
        card.hidden = false;
        card.style.left = (ev.clientX + 14) + "px";
        card.style.top = (ev.clientY + 14) + "px";
      });
      a.addEventListener("mouseleave", function () { card.hidden = true; });
    });
  }
  function makeZoom(box) {  // pan and zoom a circuit by its viewBox: wheel or buttons to zoom, drag to pan
    var svg = box.querySelector("svg.graph");
    if (!svg) return;
    var base = svg.getAttribute("viewBox").split(/[ ,]+/).map(parseFloat), vb = base.slice(), drag = null, moved = false;
    function show() { svg.setAttribute("viewBox", vb.map(function (v) { return v.toFixed(2); }).join(" ")); }
    function zoom(f, cx, cy) {  // by factor f around the point (cx, cy) in SVG units; never beyond 1/20 … 20 × the whole
      var w = Math.min(base[2] * 20, Math.max(base[2] / 20, vb[2] / f)), k = w / vb[2];
      vb = [cx - (cx - vb[0]) * k, cy - (cy - vb[1]) * k, w, vb[3] * k];
      show();
    }
    function centre() { return [vb[0] + vb[2] / 2, vb[1] + vb[3] / 2]; }
    function at(ev) { var r = svg.getBoundingClientRect(); return [vb[0] + (ev.clientX - r.left) / r.width * vb[2], vb[1] + (ev.clientY - r.top) / r.height * vb[3]]; }
    box.querySelector(".zoom-in").addEventListener("click", function () { var c = centre(); zoom(1.25, c[0], c[1]); });
    box.querySelector(".zoom-out").addEventListener("click", function () { var c = centre(); zoom(0.8, c[0], c[1]); });
    box.querySelector(".zoom-reset").addEventListener("click", function () { vb = base.slice(); show(); });
    svg.addEventListener("wheel", function (ev) { ev.preventDefault(); var p = at(ev); zoom(ev.deltaY < 0 ? 1.15 : 1 / 1.15, p[0], p[1]); }, { passive: false });
    svg.addEventListener("pointerdown", function (ev) { drag = [ev.clientX, ev.clientY, vb[0], vb[1]]; moved = false; });
    window.addEventListener("pointermove", function (ev) {
      if (!drag) return;
      var r = svg.getBoundingClientRect(), dx = ev.clientX - drag[0], dy = ev.clientY - drag[1];
      if (!moved && Math.abs(dx) + Math.abs(dy) < 4) return;  // a click on a node is no drag
      moved = true;
      svg.classList.add("panning");
      vb[0] = drag[2] - dx / r.width * vb[2];
      vb[1] = drag[3] - dy / r.height * vb[3];
      show();
    });
    window.addEventListener("pointerup", function () { drag = null; svg.classList.remove("panning"); });
    svg.addEventListener("click", function (ev) { if (moved) { ev.preventDefault(); ev.stopPropagation(); moved = false; } }, true);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(makeSortable);
    document.querySelectorAll("input.filter").forEach(makeFilter);
    document.querySelectorAll(".graph-box").forEach(makeThreshold);
    document.querySelectorAll(".graph-box").forEach(makeZoom);
    var card = document.getElementById("hovercard");
    if (card) makeHover(card);
  });
})();
