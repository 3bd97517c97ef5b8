// sfc_vision report: sortable and filterable tables, the circuit's hover card and edge threshold. No dependencies; works from file://.
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
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(makeSortable);
    document.querySelectorAll("input.filter").forEach(makeFilter);
    document.querySelectorAll(".graph-box").forEach(makeThreshold);
    var card = document.getElementById("hovercard");
    if (card) makeHover(card);
  });
})();
