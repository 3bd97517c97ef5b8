// The documentation site in the browser: math with the vendored KaTeX, and search over window.SFC_DOCS_INDEX
// (written by build_docs as search_index.js: a script, since browsers refuse fetch() of a JSON file from file://).
(function () {
  if (window.renderMathInElement) {
    renderMathInElement(document.querySelector("main") || document.body, {
      delimiters: [{left: "$$", right: "$$", display: true}, {left: "\\[", right: "\\]", display: true},
                   {left: "$", right: "$", display: false}, {left: "\\(", right: "\\)", display: false}],
      ignoredTags: ["script", "noscript", "style", "textarea", "pre", "code"], throwOnError: false});
  }
  var box = document.getElementById("sfc-search"), list = document.getElementById("sfc-results");
  var index = window.SFC_DOCS_INDEX || [];
  if (!box || !list) return;
  var root = document.body.getAttribute("data-sfc-root") || "";
  function score(e, terms) {  // every term must occur; a match in the name weighs most, then the heading, then the text
    var s = 0, name = e.name.toLowerCase(), page = e.page.toLowerCase(), text = (e.text || "").toLowerCase();
    for (var i = 0; i < terms.length; i++) {
      var t = terms[i];
      if (name === t) s += 20; else if (name.indexOf(t) >= 0) s += 8;
      else if (page.indexOf(t) >= 0) s += 3; else if (text.indexOf(t) >= 0) s += 1; else return 0;
    }
    return s + (e.kind === "api" ? 1 : 0);
  }
  function show() {
    var q = box.value.trim().toLowerCase();
    list.innerHTML = "";
    if (!q) { list.hidden = true; return; }
    var terms = q.split(/\s+/), hits = [];
    for (var i = 0; i < index.length; i++) { var s = score(index[i], terms); if (s) hits.push([s, index[i]]); }
    hits.sort(function (a, b) { return b[0] - a[0]; });
    hits.slice(0, 25).forEach(function (h) {
      var e = h[1], li = document.createElement("li"), a = document.createElement("a");
      a.href = root + e.href;
      a.innerHTML = '<span class="what"></span> <span class="where"></span>';
      a.firstChild.textContent = e.kind === "api" ? e.name + "()" : e.name;
      a.lastChild.textContent = (e.kind === "api" ? "API · " : e.kind === "page" ? "page · " : "section · ") + e.page;
      li.appendChild(a); list.appendChild(li);
    });
    if (!hits.length) list.innerHTML = '<li class="none">Nothing matches.</li>';
    list.hidden = false;
  }
  box.addEventListener("input", show);
  box.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { var a = list.querySelector("a"); if (a) window.location.href = a.href; }
    if (ev.key === "Escape") { box.value = ""; show(); }
  });
  document.addEventListener("click", function (ev) { if (!ev.target.closest(".sfc-search")) list.hidden = true; });
  var q = new URLSearchParams(window.location.search).get("q");
  if (q) { box.value = q; show(); }
})();
