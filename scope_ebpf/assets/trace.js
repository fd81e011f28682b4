// Calls in time, per thread (viztracer-like): one lane per thread, a call's
// rectangle spans its start to its end, callers above callees. The wheel zooms
// around the pointer, dragging pans, the buttons zoom around the middle.
// Data: R.trace.calls = [lane, start, duration, level, frame, weight, open].
(function(){
const T = R.trace, F = R.frames, box = document.getElementById('trace');
if (!box || !T.calls.length) return;
const W = 1000, ROW = 14, HEAD = 16, GAP = 8, AXIS = 36, MIN_NS = 1000;
const levels = T.lanes.map(() => 0);
for (const c of T.calls) levels[c[0]] = Math.max(levels[c[0]], c[3]+1);
const top = []; let y = AXIS;
for (const n of levels) { top.push(y); y += HEAD + n*ROW + GAP; }
const height = y;
let v0 = 0, v1 = Math.max(T.span, MIN_NS);

function describe(c){
  const [lane, start, dur, level, f, weight, open] = c, [fn, file, line] = F[f];
  return [F[f][3], (file || '?')+':'+(line ?? '?'), T.lanes[lane]+', '+level+' below its outermost call',
    'from +'+fmt(start)+' to +'+fmt(start+dur)+': '+fmt(dur)+(open ? ' (still running when the trace ended)' : ''),
    weight > 1 ? 'sampled: this row stands for '+weight+' calls of '+fn+', the one kept is shown' : 'exact row'].join('\n');
}
function draw(){
  const span = v1 - v0, svg = el('svg', {width:W, height, 'data-v0':v0, 'data-v1':v1});
  timeAxis(el('g', {}, svg), v0, v1, W, AXIS-2, 'time since the start of the trace');
  T.lanes.forEach((name, i) => { el('line', {class:'lane', x1:0, x2:W, y1:top[i], y2:top[i]}, svg);
    el('text', {class:'lane-name', x:2, y:top[i]+12}, svg).textContent = name; });
  let drawn = 0;
  for (const c of T.calls) {
    const [lane, start, dur, level, f, weight, open] = c;
    if (start+dur < v0 || start > v1) continue;
    const x0 = Math.max((start-v0)/span*W, -1), x1 = Math.min((start+dur-v0)/span*W, W+1);
    if (x1 - x0 < 0.3) continue;
    const g = el('g', {}, svg), yy = top[lane] + HEAD + level*ROW;
    const r = el('rect', {x:x0, y:yy, width:x1-x0, height:ROW-1, fill:color(F[f][3]), 'data-name':F[f][3],
      class:'call'+(weight > 1 ? ' sampled' : '')+(open ? ' open' : '')}, g);
    r.addEventListener('mousemove', e => showTip(e, describe(c)));
    r.addEventListener('mouseleave', hideTip);
    if (x1 - x0 > 40) { const t = el('text', {x:Math.max(x0, 0)+3, y:yy+10}, g);
      const name = F[f][0], room = Math.floor((x1-Math.max(x0, 0))/6.5)-1;
      t.textContent = name.length > room ? name.slice(0, Math.max(room, 1))+'…' : name; }
    drawn++;
  }
  svg.setAttribute('data-rects', drawn);
  box.replaceChildren(svg);
}
function zoomAt(frac, factor){
  const span = v1 - v0, full = Math.max(T.span, MIN_NS);
  const next = Math.min(full, Math.max(MIN_NS, span*factor)), at = v0 + frac*span;
  v0 = Math.min(Math.max(0, at - frac*next), full - next); v1 = v0 + next; draw();
}
box.addEventListener('wheel', e => { e.preventDefault();
  zoomAt((e.clientX - box.getBoundingClientRect().left)/W, e.deltaY < 0 ? 0.8 : 1.25); }, {passive:false});
let drag = null;
box.addEventListener('mousedown', e => { drag = {x:e.clientX, v0}; e.preventDefault(); });
addEventListener('mouseup', () => { drag = null; });
addEventListener('mousemove', e => { if (!drag) return;
  const span = v1 - v0, full = Math.max(T.span, MIN_NS);
  v0 = Math.min(Math.max(0, drag.v0 - (e.clientX-drag.x)/W*span), full - span); v1 = v0 + span; draw(); });
document.getElementById('trace-in').addEventListener('click', () => zoomAt(0.5, 0.5));
document.getElementById('trace-out').addEventListener('click', () => zoomAt(0.5, 2));
document.getElementById('trace-reset').addEventListener('click', () => { v0 = 0; v1 = Math.max(T.span, MIN_NS); draw(); });
draw();
})();
