"""torchvision's mobilenet_v3_small trained from scratch in PyTorch as `convkit experiment
transfer --model mobilenet_v3_small --image-size 64` trains its `scratch` row at 100 images per
vehicle class (64 px, AdamW 0.002 one-cycle, 30 epochs, batch 32, flips), then evaluated in eval
mode on 1,000 vehicle test images: does torchvision's model collapse in eval mode as convkit's
does? Prints train and test accuracy and the predicted-class counts."""
import torch, torchvision, glob, numpy as np
from PIL import Image
torch.manual_seed(0); torch.set_num_threads(2)
C=['airplane','automobile','ship','truck']
def load(split, per):
    xs=[];ys=[]
    for ci,c in enumerate(C):
        fs=sorted(glob.glob(f'/work/shared/data/cifar10-jpeg/{split}/{c}/*.jpg'))[:per]
        for f in fs:
            xs.append(np.asarray(Image.open(f).convert('RGB').resize((64,64),Image.BILINEAR),dtype=np.float32)/255); ys.append(ci)
    return torch.tensor(np.stack(xs)).permute(0,3,1,2), torch.tensor(ys)
xtr,ytr=load('train',100); xte,yte=load('test',250)
mean=xtr.mean((0,2,3),keepdim=True); std=xtr.std((0,2,3),keepdim=True)
xtr=(xtr-mean)/std; xte=(xte-mean)/std
m=torchvision.models.mobilenet_v3_small(num_classes=4)
opt=torch.optim.AdamW(m.parameters(),lr=0.002,weight_decay=0.01)
epochs=30; steps=epochs*((len(xtr)+31)//32)
sched=torch.optim.lr_scheduler.OneCycleLR(opt,max_lr=0.002,total_steps=steps)
for e in range(epochs):
    m.train(); perm=torch.randperm(len(xtr)); correct=0
    for i in range(0,len(xtr),32):
        idx=perm[i:i+32]; xb=xtr[idx]
        if torch.rand(1)<0.5: xb=xb.flip(3)
        out=m(xb); loss=torch.nn.functional.cross_entropy(out,ytr[idx])
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        correct+=(out.argmax(1)==ytr[idx]).sum().item()
m.eval()
with torch.no_grad(): out=m(xte)
print('torchvision scratch 100/class: train acc %.3f, eval test acc %.3f, pred counts %s'%(correct/len(xtr),(out.argmax(1)==yte).float().mean(), torch.bincount(out.argmax(1),minlength=4).tolist()))
