// Sorting a table by a column (click its header; again to reverse), and a count of the plots
// the browser laid out (body data-plots), which the headless-browser test reads.
function cellValue(td) {
  var t = td.textContent.trim(), n = parseFloat(t.replace(/[^0-9eE.+-]/g, ''));
  return isNaN(n) ? t.toLowerCase() : n;
}
document.querySelectorAll('table.t').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.title = 'sort by this column'; th.style.cursor = 'pointer';
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir > 0 ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
        if (typeof x !== typeof y) return (typeof x === 'number' ? -1 : 1) * dir;
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
window.addEventListener('load', function () {
  var shown = Array.from(document.querySelectorAll('figure.plot svg')).filter(function (s) {
    var r = s.getBoundingClientRect(); return r.width > 50 && r.height > 50;
  });
  document.body.dataset.plots = shown.length;
  document.body.dataset.summary = document.getElementById('summary') ? 'yes' : 'no';
});
