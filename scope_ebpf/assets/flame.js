// Icicle-style flame graph: root on top, a frame's width is its total weight.
// Clicking a frame zooms to it; an ancestor row or 'reset zoom' zooms out.
// Data: the folded stacks in <script id=flame-data> ([stack, weight] pairs).
(function(){
const data = JSON.parse(document.getElementById('flame-data').textContent);
const root = {name:'all', value:0, self:0, children:new Map()};
for (const [stack, w] of data) {
  let node = root; root.value += w;
  for (const f of stack.split(';')) {
    if (!node.children.has(f)) node.children.set(f, {name:f, value:0, self:0, children:new Map(), parent:node});
    node = node.children.get(f); node.value += w;
  }
  node.self += w;
}
const box = document.getElementById('flame'), tip = document.getElementById('tip');
const W = 1000, H = 17;
function fmt(ns){ if(ns>=1e9) return (ns/1e9).toFixed(2)+' s'; if(ns>=1e6) return (ns/1e6).toFixed(2)+' ms';
  if(ns>=1e3) return (ns/1e3).toFixed(1)+' us'; return ns+' ns'; }
function color(name){ let h=0; for (const c of name) h=(h*31+c.charCodeAt(0))>>>0;
  return 'hsl('+(20+h%40)+','+(60+h%30)+'%,'+(55+h%15)+'%)'; }
function depthOf(n){ let d=0; for(const c of n.children.values()) d=Math.max(d, depthOf(c)); return d+1; }
function draw(zoom){
  const ancestors = []; for (let p = zoom.parent; p; p = p.parent) ancestors.unshift(p);
  const rows = ancestors.length + depthOf(zoom);
  const svg = document.createElementNS('http://www.w3.org/2000/svg','svg');
  svg.setAttribute('width', W); svg.setAttribute('height', rows*H);
  svg.setAttribute('data-zoom', zoom.name);
  function rect(n, x, w, y){
    const g = document.createElementNS(svg.namespaceURI,'g');
    const r = document.createElementNS(svg.namespaceURI,'rect');
    r.setAttribute('x', x); r.setAttribute('y', y*H); r.setAttribute('width', Math.max(w,0.5));
    r.setAttribute('height', H-1); r.setAttribute('fill', n===root ? '#ccc' : color(n.name));
    r.setAttribute('data-name', n.name);
    r.addEventListener('click', () => draw(n));
    r.addEventListener('mousemove', e => { tip.style.display='block'; tip.style.left=(e.clientX+12)+'px';
      tip.style.top=(e.clientY+12)+'px'; tip.textContent = n.name+' — total '+fmt(n.value)+
      ' ('+(100*n.value/(root.value||1)).toFixed(1)+'%), self '+fmt(n.self); });
    r.addEventListener('mouseleave', () => tip.style.display='none');
    g.appendChild(r);
    if (w > 40) { const t = document.createElementNS(svg.namespaceURI,'text');
      t.setAttribute('x', x+3); t.setAttribute('y', y*H+12);
      t.textContent = n.name.length*6.5 > w ? n.name.slice(0, Math.floor(w/6.5)-1)+'…' : n.name;
      g.appendChild(t); }
    svg.appendChild(g);
  }
  ancestors.forEach((a, i) => rect(a, 0, W, i));
  (function lay(n, x, w, y){ rect(n, x, w, y); let cx = x;
    for (const c of [...n.children.values()].sort((a,b)=>a.name<b.name?-1:1)) {
      const cw = w * c.value / (n.value||1); if (cw >= 0.3) lay(c, cx, cw, y+1); cx += cw; }
  })(zoom, 0, W, ancestors.length);
  box.replaceChildren(svg);
  document.getElementById('flame-zoom').textContent = zoom === root ? '' : 'zoomed to '+zoom.name+' ';
}
document.getElementById('flame-reset').addEventListener('click', () => draw(root));
draw(root);
})();
