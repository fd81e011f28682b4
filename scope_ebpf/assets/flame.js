// Icicle-style flame graph of on-CPU time: root on top, a frame's width is its
// time on that path (self and children). Click a frame to zoom to it; an
// ancestor or 'reset zoom' zooms out. The select shows all threads, one
// process or one thread; the search box highlights matching frames and says
// which share of the shown time they hold (frames inside a match count once).
// One widget per graph: P is its element ids' prefix ('flame' for the exact
// rows' graph, 'cpuflame' and 'offflame' for the sampled and off-CPU ones), FL
// its data, what the label of a frame's time ('on-CPU', 'off-CPU').
function flameGraph(P, FL, what){
const F = R.frames;
const box = document.getElementById(P), pick = document.getElementById(P+'-thread');
const search = document.getElementById(P+'-search'), matched = document.getElementById(P+'-matched');
if (!box || !FL) return;
const W = 1000, H = 17, PATH_LINES = 24;
const haystack = F.map(f => (f[3]+' '+(f[1]||'')).toLowerCase());
let root, zoom, query = '';

function option(value, text){ const o = document.createElement('option');
  o.value = value; o.textContent = text; pick.appendChild(o); }
option('all', 'all threads');
const pids = [...new Set(FL.threads.map(t => t[0]))];
if (pids.length > 1) for (const p of pids) option('p:'+p, 'pid '+p+', all threads');
for (const [pid, tid, name] of FL.threads) option('t:'+pid+':'+tid, (pids.length > 1 ? 'pid '+pid+': ' : '')+name);

function build(choice){
  root = {name:'all', value:0, self:0, children:new Map(), parent:null};
  for (const [pid, tid, , stacks] of FL.threads) {
    if (choice !== 'all' && choice !== 'p:'+pid && choice !== 't:'+pid+':'+tid) continue;
    const top = FL.multi && choice === 'all' ? ['pid '+pid] : [];
    for (const [path, w] of stacks) {
      let node = root; root.value += w;
      for (const k of top.concat(path)) {
        if (!node.children.has(k)) node.children.set(k, {frame: typeof k === 'number' ? k : null,
          name: typeof k === 'number' ? F[k][3] : k, pid, value:0, self:0, children:new Map(), parent:node});
        node = node.children.get(k); node.value += w;
      }
      node.self += w;
    }
  }
  zoom = root;
}
const isMatch = n => query !== '' && n.frame !== null && n.frame !== undefined && haystack[n.frame].includes(query);
function matchedShare(){
  let sum = 0;
  (function walk(n){ if (isMatch(n)) { sum += n.value; return; } for (const c of n.children.values()) walk(c); })(root);
  return sum;
}
function describe(n){
  const lines = [n.name];
  if (n.frame !== null && n.frame !== undefined) {
    const [fn, file, line] = F[n.frame], where = (file || '?')+':'+(line ?? '?');
    if (!n.name.includes(where)) lines.push('file: '+where);
    const t = FL.totals[n.pid+':'+n.frame];
    if (t) lines.push('total of '+fn+' in pid '+n.pid+': '+t[2]+' wall, '+t[4]+' on-CPU, '+
                      t[0].toLocaleString('en-US')+' calls', '  (a call inside another call of '+fn+' is not counted again)');
  }
  lines.push('this path: '+fmt(n.value)+' '+what+' ('+(100*n.value/(root.value||1)).toFixed(1)+
             '% of the shown time), self '+fmt(n.self));
  const path = []; for (let p = n; p && p !== root; p = p.parent) path.unshift(p.name);
  lines.push('call path, outermost first ('+path.length+' frames):');
  const shown = path.length > PATH_LINES ? [...path.slice(0, 4), '… '+(path.length-PATH_LINES)+' more …',
                                            ...path.slice(path.length-PATH_LINES+4)] : path;
  for (const p of shown) lines.push('  '+p);
  return lines.join('\n');
}
function depthOf(n){ let d=0; for(const c of n.children.values()) d=Math.max(d, depthOf(c)); return d+1; }
function draw(){
  const ancestors = []; for (let p = zoom.parent; p; p = p.parent) ancestors.unshift(p);
  const rows = ancestors.length + depthOf(zoom);
  const svg = el('svg', {width:W, height:rows*H, 'data-zoom':zoom.name, 'data-total':root.value});
  function rect(n, x, w, y){
    const g = el('g', {}, svg), hit = isMatch(n);
    const r = el('rect', {x, y:y*H, width:Math.max(w,0.5), height:H-1, 'data-name':n.name,
      fill: hit ? '#e040fb' : n === root ? '#ccc' : color(n.name)}, g);
    if (hit) r.setAttribute('data-match', '1');
    r.addEventListener('click', () => { zoom = n; draw(); });
    r.addEventListener('mousemove', e => showTip(e, describe(n)));
    r.addEventListener('mouseleave', hideTip);
    if (w > 40) { const t = el('text', {x:x+3, y:y*H+12}, g);
      t.textContent = n.name.length*6.5 > w ? n.name.slice(0, Math.floor(w/6.5)-1)+'…' : n.name; }
  }
  ancestors.forEach((a, i) => rect(a, 0, W, i));
  (function lay(n, x, w, y){ rect(n, x, w, y); let cx = x;
    for (const c of [...n.children.values()].sort((a,b)=>a.name<b.name?-1:1)) {
      const cw = w * c.value / (n.value||1); if (cw >= 0.3) lay(c, cx, cw, y+1); cx += cw; }
  })(zoom, 0, W, ancestors.length);
  box.replaceChildren(svg);
  document.getElementById(P+'-zoom').textContent = zoom === root ? '' : 'zoomed to '+zoom.name;
  if (query === '') matched.textContent = '';
  else { const m = matchedShare();
    matched.textContent = 'Matched: '+(100*m/(root.value||1)).toFixed(1)+'% ('+fmt(m)+' of '+fmt(root.value)+')'; }
}
pick.addEventListener('change', () => { build(pick.value); draw(); });
search.addEventListener('input', () => { query = search.value.trim().toLowerCase(); draw(); });
document.getElementById(P+'-reset').addEventListener('click', () => { zoom = root; draw(); });
build('all'); draw();
}
flameGraph('flame', R.flame, 'on-CPU');
flameGraph('cpuflame', R.cpuflame, 'on-CPU (sampled)');
flameGraph('offflame', R.offflame, 'off-CPU');
