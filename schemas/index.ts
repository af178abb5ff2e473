export * from './criteria';
export * from './plan';
export * from './role';
export * from './tools';
export * from './model';
export * from './task';
export * from './constants';
export * from './policy';
