// Shared by the page's scripts: the data, number formats, colours, time axes
// and the tooltip. Durations print as the tables print them (units.human_ns).
const R = JSON.parse(document.getElementById('report-data').textContent);
const SVG = 'http://www.w3.org/2000/svg';
function el(name, attrs, parent){
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(ns){
  ns = Math.round(ns); if (Math.abs(ns) < 1000) return ns+' ns';
  let x = ns; const units = ['us','ms','s'];
  for (let i = 0; i < units.length; i++) {
    x /= 1000;
    let shown = Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1)
      : x.toFixed(2).replace(/0$/, '');
    if (Math.abs(parseFloat(shown)) < 1000 || i === units.length-1) return shown+' '+units[i];
  }
}
function color(name){ let h=0; for (const c of name) h=(h*31+c.charCodeAt(0))>>>0;
  return 'hsl('+(20+h%40)+','+(60+h%30)+'%,'+(55+h%15)+'%)'; }
// A round tick step (1, 2 or 5 x 10^k ns) for about n ticks, and a tick's label
// in the unit the step calls for (report.py's _step and _tick_text).
function tickStep(span, n){ const raw = Math.max(span, 1)/n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m*mag) return m*mag; }
function tickText(ns, step){
  for (const [unit, size] of [['s',1e9],['ms',1e6],['us',1e3],['ns',1]])
    if (step >= size/10 || unit === 'ns')
      return (ns/size).toFixed(Math.max(0, -Math.floor(Math.log10(step/size)+1e-9)))+' '+unit;
}
// Ticks of [v0, v1] (ns) over width px at y, into svg g.
function timeAxis(g, v0, v1, width, y, title){
  const step = tickStep(v1-v0, 8);
  el('line', {class:'axis', x1:0, x2:width, y1:y, y2:y}, g);
  for (let t = Math.ceil(v0/step)*step; t <= v1; t += step) {
    const x = (t-v0)/(v1-v0)*width, tick = el('g', {class:'tick'}, g);
    el('line', {x1:x, x2:x, y1:y-4, y2:y}, tick);
    const label = el('text', {x:x, y:y-7, 'text-anchor': x < 30 ? 'start' : x > width-30 ? 'end' : 'middle'}, tick);
    label.textContent = tickText(t, step);
  }
  const t = el('text', {class:'axis-title', x:width/2, y:11, 'text-anchor':'middle'}, g);
  t.textContent = title;
}
const tip = document.getElementById('tip');
function showTip(e, text){
  tip.textContent = text; tip.style.display = 'block';
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = Math.max(0, Math.min(e.clientX+12, innerWidth-w-4))+'px';
  tip.style.top = (e.clientY+12+h > innerHeight ? Math.max(0, e.clientY-h-12) : e.clientY+12)+'px';
}
function hideTip(){ tip.style.display = 'none'; }
