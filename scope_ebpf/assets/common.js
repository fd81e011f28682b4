// Shared by the page's scripts: the data, number formats, colours and the
// tooltip. Durations print as the tables print them (units.human_ns).
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
const tip = document.getElementById('tip');
function showTip(e, text){
  tip.textContent = text; tip.style.display = 'block';
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = Math.max(0, Math.min(e.clientX+12, innerWidth-w-4))+'px';
  tip.style.top = (e.clientY+12+h > innerHeight ? Math.max(0, e.clientY-h-12) : e.clientY+12)+'px';
}
function hideTip(){ tip.style.display = 'none'; }
