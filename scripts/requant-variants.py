#!/usr/bin/env python3
"""Where re-quantizing a Q4_1 edit costs: writes whole-tensor deltas (apply with `pke apply --force`) for
vanilla (V), the float edit (E), plain re-quantization of the whole tensor (F), plain rounding of the edited
values only, unedited values exact (U), and the original block grids kept with the edit clamped into them (G),
and prints the edit's relative rounding error under F and G. Standard library only (no numpy).

Usage: scripts/requant-variants.py MODEL.gguf DELTA.safetensors GGUF_TENSOR HF_TENSOR OUT_DIR
  e.g. .data/models/SmolLM2-135M-Instruct.Q4_1.gguf out/demo/delta.safetensors blk.11.ffn_down.weight \
       model.layers.11.mlp.down_proj.weight out/rq; then for v in V E F U G: pke apply -m smollm2
       --delta out/rq/var-$v.safetensors --out out/rq/m-$v --force; pke score -m out/rq/m-$v --file TEXT
"""
import array, json, math, os, struct, sys
def read_gguf(path):
    f=open(path,'rb'); magic=f.read(4); ver,=struct.unpack('<I',f.read(4)); nt,nkv=struct.unpack('<QQ',f.read(16))
    def rs(): n,=struct.unpack('<Q',f.read(8)); return f.read(n).decode('utf8','replace')
    sizes={0:1,1:1,2:2,3:2,4:4,5:4,6:4,7:1,10:8,11:8,12:8}
    fmt={0:'B',1:'b',2:'H',3:'h',4:'I',5:'i',6:'f',7:'?',10:'Q',11:'q',12:'d'}
    def rv(t):
        if t==8: return rs()
        if t==9:
            et,=struct.unpack('<I',f.read(4)); n,=struct.unpack('<Q',f.read(8))
            if et==8: return [rs() for _ in range(n)]
            f.read(sizes[et]*n); return None
        return struct.unpack('<'+fmt[t],f.read(sizes[t]))[0]
    meta={}
    for _ in range(nkv):
        k=rs(); t,=struct.unpack('<I',f.read(4)); meta[k]=rv(t)
    infos={}
    for _ in range(nt):
        n=rs(); nd,=struct.unpack('<I',f.read(4)); dims=struct.unpack('<'+'Q'*nd,f.read(8*nd)); t,off=struct.unpack('<IQ',f.read(12)); infos[n]=(dims,t,off)
    al=meta.get('general.alignment',32); pos=f.tell(); start=(pos+al-1)//al*al
    return f,meta,infos,start
def q41_blocks(f,start,info):
    dims,t,off=info; assert t==3, t
    nvals=dims[0]*dims[1]; nb=nvals//32; f.seek(start+off); raw=f.read(nb*20)
    out=[]
    for b in range(nb):
        d,m=struct.unpack('<ee',raw[b*20:b*20+4]); qs=raw[b*20+4:b*20+20]
        q=[qs[i]&15 for i in range(16)]+[qs[i]>>4 for i in range(16)]
        out.append((d,m,q))
    return out,dims
gpath, dpath, tname, hname, outdir = sys.argv[1:6]
f,meta,infos,start=read_gguf(gpath)
blocks,dims=q41_blocks(f,start,infos[tname])
row=dims[0]; nrows=dims[1]; bpr=row//32
g=open(dpath,'rb'); n,=struct.unpack('<Q',g.read(8)); h=json.loads(g.read(n)); base=8+n
def load(k):
    v=h[k]; g.seek(base+v['data_offsets'][0]); raw=g.read(v['data_offsets'][1]-v['data_offsets'][0])
    a=array.array('f' if v['dtype']=='F32' else 'q'); a.frombytes(raw); return a
delta=load(hname+'::delta'); cols=list(load(hname+'::columns')); nc=len(cols); colpos={c:i for i,c in enumerate(cols)}
def f16(x): return struct.unpack('<e',struct.pack('<e',x))[0]
err={'F':0.0,'G':0.0}; dd=0.0
V=array.array('f'); E=array.array('f'); F=array.array('f'); U=array.array('f'); G=array.array('f')
for r in range(nrows):
    for b in range(bpr):
        d,m,q=blocks[r*bpr+b]
        x0=[d*qq+m for qq in q]
        dl=[delta[r*nc+colpos[b*32+j]] if (b*32+j) in colpos else 0.0 for j in range(32)]
        x1=[a+bb for a,bb in zip(x0,dl)]
        mn=min(x1); mx=max(x1); dn=(mx-mn)/15; idn=1/dn if dn else 0
        xf=[f16(dn)*min(15,max(0,int((x-mn)*idn+0.5)))+f16(mn) for x in x1]
        xg=[d*min(15,max(0,round((x-m)/d)))+m if d else m for x in x1]
        V.extend(x0); E.extend(x1); F.extend(xf); G.extend(xg)
        U.extend([xf[j] if dl[j]!=0.0 else x0[j] for j in range(32)])
        for j in range(32):
            if dl[j]!=0.0:
                dd+=dl[j]**2; err['F']+=(xf[j]-x1[j])**2; err['G']+=(xg[j]-x1[j])**2
md={k:v for k,v in h['__metadata__'].items() if k!='preserve'}
allc=array.array('q',range(row))
for name,arr in [('V',V),('E',E),('F',F),('U',U),('G',G)]:
    tensors=[(hname+'::after',arr,'F32',[nrows,row]),(hname+'::before',V,'F32',[nrows,row]),(hname+'::columns',allc,'I64',[row])]
    hdr={'__metadata__':md}; off=0; blobs=[]
    for k,a,dt,sh in sorted(tensors):
        b=a.tobytes(); hdr[k]={'dtype':dt,'shape':sh,'data_offsets':[off,off+len(b)]}; off+=len(b); blobs.append(b)
    hj=json.dumps(hdr).encode(); hj+=b' '*((8-len(hj)%8)%8)
    with open(os.path.join(outdir,f'var-{name}.safetensors'),'wb') as o:
        o.write(struct.pack('<Q',len(hj))); o.write(hj); [o.write(b) for b in blobs]
print('relative rounding error of the edited values: F %.3f, G %.3f' % (math.sqrt(err['F']/dd), math.sqrt(err['G']/dd)))
